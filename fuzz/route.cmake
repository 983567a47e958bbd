soth_add_fuzz(route LIBS soth_base)
