soth_add_fuzz(identity LIBS soth_policy)
