# The QUIC client Initial reader (tls/quic_initial.c); wolfSSL directly too: the target seals
# plaintext records into Initials so the fuzzer reaches past the AEAD.
soth_add_fuzz(quic_initial LIBS soth_tls soth_wolfssl)
