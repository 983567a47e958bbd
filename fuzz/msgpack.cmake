soth_add_fuzz(msgpack LIBS soth_proto PkgConfig::MSGPACK PkgConfig::JANSSON)
