soth_add_fuzz(ws LIBS soth_proto)
