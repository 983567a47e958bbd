soth_add_fuzz(h2 LIBS soth_proto PkgConfig::NGHTTP2)
