soth_add_fuzz(ring_reader LIBS soth_observe PkgConfig::JANSSON)
