soth_add_fuzz(h1 LIBS soth_proto)
