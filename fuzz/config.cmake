soth_add_fuzz(config LIBS soth_base)
