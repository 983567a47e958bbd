soth_add_fuzz(clienthello LIBS soth_tls)
