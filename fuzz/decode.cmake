soth_add_fuzz(decode LIBS soth_proto PkgConfig::JANSSON)
