soth_add_fuzz(sse LIBS soth_proto)
