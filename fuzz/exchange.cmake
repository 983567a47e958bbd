soth_add_fuzz(exchange LIBS soth_observe PkgConfig::JANSSON)
