soth_add_fuzz(socks5 LIBS soth_proto)
