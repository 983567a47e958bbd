soth_add_fuzz(nats_proto LIBS soth_base)
