/* soth_utf8_seq_len / soth_utf8_valid: the UTF-8 check behind event JSON and payload_parsed. */
#include <criterion/criterion.h>

#include "soth/base.h"

#define LEN(lit) soth_utf8_seq_len((lit), sizeof(lit) - 1)

/* Reference encoder: the shortest form of cp (no range checks). */
static size_t encode(uint32_t cp, unsigned char out[4])
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xc0 | cp >> 6);
        out[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xe0 | cp >> 12);
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (unsigned char)(0xf0 | cp >> 18);
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

Test(utf8, accepts_the_boundaries_of_each_length)
{
    cr_assert_eq(LEN("a"), 1);
    cr_assert_eq(soth_utf8_seq_len("\0", 1), 1, "NUL is ASCII");
    cr_assert_eq(LEN("\x7f"), 1);
    cr_assert_eq(LEN("\xc2\x80"), 2, "U+0080");
    cr_assert_eq(LEN("\xdf\xbf"), 2, "U+07FF");
    cr_assert_eq(LEN("\xe0\xa0\x80"), 3, "U+0800");
    cr_assert_eq(LEN("\xed\x9f\xbf"), 3, "U+D7FF, just below the surrogates");
    cr_assert_eq(LEN("\xee\x80\x80"), 3, "U+E000, just above them");
    cr_assert_eq(LEN("\xef\xbf\xbf"), 3, "U+FFFF");
    cr_assert_eq(LEN("\xf0\x90\x80\x80"), 4, "U+10000");
    cr_assert_eq(LEN("\xf0\x9f\x98\x80"), 4, "U+1F600");
    cr_assert_eq(LEN("\xf4\x8f\xbf\xbf"), 4, "U+10FFFF");
    cr_assert_eq(LEN("\xc3\xa9tail"), 2, "only the first sequence counts");
}

Test(utf8, refuses_bytes_that_never_start_a_sequence)
{
    static const unsigned char bad[] = {0x80, 0x9f, 0xbf, 0xc0, 0xc1, 0xf5, 0xf8, 0xfe, 0xff};
    for (size_t i = 0; i < sizeof(bad); i++) {
        unsigned char s[4] = {bad[i], 0x80, 0x80, 0x80};
        cr_assert_eq(soth_utf8_seq_len(s, sizeof(s)), 0, "lead byte 0x%02x", bad[i]);
    }
}

Test(utf8, refuses_overlong_forms)
{
    cr_assert_eq(LEN("\xc0\x80"), 0, "NUL in two bytes");
    cr_assert_eq(LEN("\xc0\xaf"), 0, "'/' in two bytes");
    cr_assert_eq(LEN("\xc1\xbf"), 0, "U+007F in two bytes");
    cr_assert_eq(LEN("\xe0\x80\x80"), 0, "NUL in three bytes");
    cr_assert_eq(LEN("\xe0\x80\xaf"), 0, "'/' in three bytes");
    cr_assert_eq(LEN("\xe0\x9f\xbf"), 0, "U+07FF in three bytes");
    cr_assert_eq(LEN("\xf0\x80\x80\x80"), 0, "NUL in four bytes");
    cr_assert_eq(LEN("\xf0\x8f\xbf\xbf"), 0, "U+FFFF in four bytes");
}

Test(utf8, refuses_surrogates_and_code_points_above_10ffff)
{
    cr_assert_eq(LEN("\xed\xa0\x80"), 0, "U+D800");
    cr_assert_eq(LEN("\xed\xad\xbf"), 0, "U+DB7F");
    cr_assert_eq(LEN("\xed\xb0\x80"), 0, "U+DC00");
    cr_assert_eq(LEN("\xed\xbf\xbf"), 0, "U+DFFF");
    cr_assert_not(soth_utf8_valid("\xed\xa0\xbd\xed\xb8\x80", 6), "CESU-8 pair for U+1F600");
    cr_assert_eq(LEN("\xf4\x90\x80\x80"), 0, "U+110000");
    cr_assert_eq(LEN("\xf7\xbf\xbf\xbf"), 0, "U+1FFFFF");
}

Test(utf8, refuses_truncated_sequences)
{
    cr_assert_eq(soth_utf8_seq_len("", 0), 0);
    cr_assert_eq(LEN("\xc3"), 0);
    cr_assert_eq(LEN("\xe2\x82"), 0);
    cr_assert_eq(LEN("\xf0\x9f\x98"), 0);
    cr_assert_eq(soth_utf8_seq_len("\xc3\xa9", 1), 0, "n cuts the sequence");
    cr_assert_eq(soth_utf8_seq_len("\xf0\x9f\x98\x80", 3), 0, "n cuts the sequence");
    cr_assert_eq(LEN("\xc3\x41"), 0, "ASCII where a continuation belongs");
    cr_assert_eq(LEN("\xe2\x28\xa1"), 0);
    cr_assert_eq(LEN("\xe2\x82\x28"), 0);
    cr_assert_eq(LEN("\xf0\x9f\x98\xc3"), 0, "a lead byte where a continuation belongs");
}

Test(utf8, every_scalar_value_round_trips_and_nothing_else_of_its_shape_passes)
{
    unsigned char s[4];
    for (uint32_t cp = 0; cp <= 0x10ffff; cp++) {
        size_t n = encode(cp, s);
        size_t want = cp >= 0xd800 && cp <= 0xdfff ? 0 : n;
        size_t got = soth_utf8_seq_len(s, n);
        if (got != want)
            cr_assert_eq(got, want, "U+%04X", (unsigned)cp);
    }
    /* Every lead byte 0xe0..0xef with every pair of continuation bytes: exactly the 61440
     * three-byte scalar values (U+0800..U+FFFF without the 2048 surrogates) pass. */
    size_t ok = 0;
    for (unsigned a = 0xe0; a <= 0xef; a++)
        for (unsigned b = 0x80; b <= 0xbf; b++)
            for (unsigned c = 0x80; c <= 0xbf; c++) {
                unsigned char t[3] = {(unsigned char)a, (unsigned char)b, (unsigned char)c};
                ok += soth_utf8_seq_len(t, 3) == 3;
            }
    cr_assert_eq(ok, 61440);
}

Test(utf8, valid_checks_the_whole_span)
{
    cr_assert(soth_utf8_valid("", 0));
    cr_assert(soth_utf8_valid("plain ascii", 11));
    static const char mixed[] = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80!";
    cr_assert(soth_utf8_valid(mixed, sizeof(mixed) - 1));
    cr_assert_not(soth_utf8_valid(mixed, sizeof(mixed) - 3), "cut inside the emoji");
    cr_assert_not(soth_utf8_valid("ok\xffok", 5), "invalid byte in the middle");
    cr_assert_not(soth_utf8_valid("ok\xc0\x80", 4), "overlong at the end");
    cr_assert(soth_utf8_valid("a\0b", 3), "NUL bytes are valid UTF-8");
}
