soth_add_fuzz(grpc LIBS soth_proto)
