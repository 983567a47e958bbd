soth_add_fuzz(bundle LIBS soth_base)
