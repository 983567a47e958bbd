soth_add_fuzz(connect LIBS soth_proto)
