/*
 * The CA: load PEM files, or generate an ECDSA P-256 CA on first run; rotation. Start-up
 * only (file I/O). docs/tls.md has the operator's view.
 */
#include "tls_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CA_VALIDITY_DAYS 3652 /* ten years */
#define CA_BACKDATE_S    3600
#define PEM_MAX          (256 * 1024)

static int fail(char *err, size_t err_len, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t err_len, int rc, const char *fmt, ...)
{
    if (err != NULL && err_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int read_file(const char *path, uint8_t **out, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return -errno;
    uint8_t *buf = malloc(PEM_MAX + 1);
    size_t n = 0;
    int rc = 0;
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, PEM_MAX - n);
        if (r == -1 && errno == EINTR)
            continue;
        if (r == -1) {
            rc = -errno;
            break;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == PEM_MAX) {
            rc = -EFBIG;
            break;
        }
    }
    close(fd);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return 0;
}

/* Write name in dir atomically (temp file + rename) with mode. */
static int write_file_at(int dirfd, const char *name, const uint8_t *data, size_t len, mode_t mode)
{
    char tmp[128];
    snprintf(tmp, sizeof(tmp), ".%s.tmp", name);
    unlinkat(dirfd, tmp, 0);
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd == -1)
        return -errno;
    size_t off = 0;
    int rc = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w == -1 && errno == EINTR)
            continue;
        if (w == -1) {
            rc = -errno;
            break;
        }
        off += (size_t)w;
    }
    if (rc == 0 && fchmod(fd, mode) == -1) /* umask may have narrowed or widened it */
        rc = -errno;
    if (rc == 0 && fsync(fd) == -1)
        rc = -errno;
    close(fd);
    if (rc == 0 && renameat(dirfd, tmp, dirfd, name) == -1)
        rc = -errno;
    if (rc < 0)
        unlinkat(dirfd, tmp, 0);
    return rc;
}

/* ASN.1 Time for t: UTCTime before 2050, GeneralizedTime after (RFC 5280 4.1.2.5). */
int tls_encode_time(int64_t t, uint8_t *out, int *out_len);
int tls_encode_time(int64_t t, uint8_t *out, int *out_len)
{
    struct tm tm;
    time_t tt = (time_t)t;
    char s[24];
    if (gmtime_r(&tt, &tm) == NULL)
        return SOTH_E_MALFORMED;
    int year = tm.tm_year + 1900;
    int n;
    if (year >= 1950 && year < 2050) {
        n = snprintf(s, sizeof(s), "%02d%02d%02d%02d%02d%02dZ", year % 100, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        out[0] = 0x17; /* UTCTime */
    } else {
        n = snprintf(s, sizeof(s), "%04d%02d%02d%02d%02d%02dZ", year, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec);
        out[0] = 0x18; /* GeneralizedTime */
    }
    out[1] = (uint8_t)n;
    memcpy(out + 2, s, (size_t)n);
    *out_len = n + 2;
    return 0;
}

static int64_t cert_not_before(const uint8_t *der, size_t len)
{
    Cert *c = malloc(sizeof(*c));
    struct tm before, after;
    int64_t t = -1;
    if (c == NULL)
        return -1;
    if (wc_InitCert(c) == 0 && wc_SetDatesBuffer(c, der, (int)len) == 0 &&
        wc_GetCertDates(c, &before, &after) == 0)
        t = (int64_t)timegm(&before);
    free(c);
    return t;
}

/* Decode a private key DER (PKCS#8 or traditional) into ca->key_*: ECDSA or RSA. */
static int ca_take_key(struct soth_tls_ca *ca, uint8_t *der, size_t len)
{
    word32 idx = 0;
    if (wc_GetPkcs8TraditionalOffset(der, &idx, (word32)len) < 0)
        idx = 0;
    const uint8_t *k = der + idx;
    size_t klen = len - idx;

    ecc_key ecc;
    if (wc_ecc_init(&ecc) == 0) {
        word32 i = 0;
        int rc = wc_EccPrivateKeyDecode(k, &i, &ecc, (word32)klen);
        if (rc == 0) {
            ca->key_type = ECC_TYPE;
            ca->sig_type = CTC_SHA256wECDSA;
            ca->sig_max = (size_t)wc_ecc_sig_size(&ecc);
        }
        wc_ecc_free(&ecc);
        if (rc == 0)
            goto take;
    }
    RsaKey rsa;
    if (wc_InitRsaKey(&rsa, NULL) == 0) {
        word32 i = 0;
        int rc = wc_RsaPrivateKeyDecode(k, &i, &rsa, (word32)klen);
        if (rc == 0) {
            ca->key_type = RSA_TYPE;
            ca->sig_type = CTC_SHA256wRSA;
            ca->sig_max = (size_t)wc_RsaEncryptSize(&rsa);
        }
        wc_FreeRsaKey(&rsa);
        if (rc == 0)
            goto take;
    }
    return SOTH_E_MALFORMED;
take:
    ca->key_der = malloc(klen);
    if (ca->key_der == NULL)
        return SOTH_E_NOMEM;
    memcpy(ca->key_der, k, klen);
    ca->key_der_len = klen;
    return 0;
}

/* Does the key belong to the certificate? (an operator mixing files up) */
static bool ca_key_matches(const struct soth_tls_ca *ca)
{
    WOLFSSL_CTX *ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
    bool ok = false;
    if (ctx == NULL)
        return false;
    if (wolfSSL_CTX_use_certificate_buffer(ctx, ca->cert_der, (long)ca->cert_der_len,
                                           WOLFSSL_FILETYPE_ASN1) == WOLFSSL_SUCCESS &&
        wolfSSL_CTX_use_PrivateKey_buffer(ctx, ca->key_der, (long)ca->key_der_len,
                                          WOLFSSL_FILETYPE_ASN1) == WOLFSSL_SUCCESS &&
        wolfSSL_CTX_check_private_key(ctx) == WOLFSSL_SUCCESS)
        ok = true;
    wolfSSL_CTX_free(ctx);
    return ok;
}

static int ca_load(struct soth_tls_ca *ca, const char *cert_path, const char *key_path,
                   const char *cert_key, const char *key_key, char *err, size_t err_len)
{
    uint8_t *pem = NULL, *der = NULL;
    size_t pem_len;
    int rc = read_file(cert_path, &pem, &pem_len);
    if (rc < 0)
        return fail(err, err_len, rc, "%s: cannot read %s: %s", cert_key, cert_path, strerror(-rc));
    der = malloc(pem_len + 16);
    if (der == NULL) {
        free(pem);
        return fail(err, err_len, SOTH_E_NOMEM, "%s: out of memory", cert_key);
    }
    int n = wc_CertPemToDer(pem, (int)pem_len, der, (int)pem_len + 16, CERT_TYPE);
    free(pem);
    if (n <= 0) {
        free(der);
        return fail(err, err_len, SOTH_E_MALFORMED, "%s: %s: no PEM certificate", cert_key,
                    cert_path);
    }
    ca->cert_der = der;
    ca->cert_der_len = (size_t)n;
    ca->not_before = cert_not_before(der, (size_t)n);
    if (ca->not_before < 0)
        return fail(err, err_len, SOTH_E_MALFORMED, "%s: %s: unreadable certificate", cert_key,
                    cert_path);

    rc = read_file(key_path, &pem, &pem_len);
    if (rc < 0)
        return fail(err, err_len, rc, "%s: cannot read %s: %s", key_key, key_path, strerror(-rc));
    der = malloc(pem_len + 16);
    if (der == NULL) {
        free(pem);
        return fail(err, err_len, SOTH_E_NOMEM, "%s: out of memory", key_key);
    }
    n = wc_KeyPemToDer(pem, (int)pem_len, der, (int)pem_len + 16, NULL);
    memset(pem, 0, pem_len);
    free(pem);
    rc = n > 0 ? ca_take_key(ca, der, (size_t)n) : SOTH_E_MALFORMED;
    memset(der, 0, pem_len + 16);
    free(der);
    if (rc < 0)
        return fail(err, err_len, rc, "%s: %s: not an unencrypted ECDSA or RSA private key",
                    key_key, key_path);
    if (!ca_key_matches(ca))
        return fail(err, err_len, SOTH_E_CONFIG, "%s: %s does not match the certificate %s",
                    key_key, key_path, cert_path);
    ca->cert_path = strdup(cert_path);
    if (ca->cert_path == NULL)
        return fail(err, err_len, SOTH_E_NOMEM, "%s: out of memory", cert_key);
    return 0;
}

/* ---- a minimal DER walker for the one edit below */
static bool der_tlv(const uint8_t *p, size_t n, size_t *hdr, size_t *len)
{
    if (n < 2)
        return false;
    if (p[1] < 0x80) {
        *hdr = 2;
        *len = p[1];
    } else {
        size_t k = p[1] & 0x7f;
        if (k == 0 || k > 3 || n < 2 + k)
            return false;
        *len = 0;
        for (size_t i = 0; i < k; i++)
            *len = (*len << 8) | p[2 + i];
        *hdr = 2 + k;
    }
    return *hdr + *len <= n;
}

static size_t der_hdr(uint8_t tag, size_t len, uint8_t *out)
{
    out[0] = tag;
    if (len < 0x80) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len < 0x100) {
        out[1] = 0x81;
        out[2] = (uint8_t)len;
        return 3;
    }
    out[1] = 0x82;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    return 4;
}

/*
 * RFC 5280 4.2.1.9: a CA's basicConstraints MUST be critical, and strict verifiers (OpenSSL
 * -x509_strict, Python >= 3.13 default contexts) refuse a CA without it. wolfSSL 5.5.4 always
 * writes it non-critical, so the unsigned TBSCertificate is re-encoded with the flag added.
 * Returns the new TBS length or -1.
 */
static int tbs_make_bc_critical(uint8_t *tbs, size_t tbs_len, size_t cap)
{
    static const uint8_t bc_oid[] = {0x06, 0x03, 0x55, 0x1d, 0x13};
    uint8_t out[2048], exts[1024];
    size_t hdr, len, off, ext_off = 0, exts_len = 0;

    if (!der_tlv(tbs, tbs_len, &hdr, &len) || tbs[0] != 0x30)
        return -1;
    const uint8_t *c = tbs + hdr;
    size_t clen = len;
    /* the extensions [3] are the last element of the TBS */
    for (off = 0; off < clen; off += hdr + len) {
        if (!der_tlv(c + off, clen - off, &hdr, &len))
            return -1;
        if (c[off] == 0xa3) {
            ext_off = off;
            break;
        }
    }
    if (off >= clen || off + hdr + len != clen)
        return -1;
    const uint8_t *a3 = c + ext_off + hdr;
    size_t a3_len = len;
    if (!der_tlv(a3, a3_len, &hdr, &len) || a3[0] != 0x30)
        return -1;
    const uint8_t *seq = a3 + hdr;
    size_t seq_len = len;
    for (off = 0; off < seq_len; off += hdr + len) {
        if (!der_tlv(seq + off, seq_len - off, &hdr, &len))
            return -1;
        const uint8_t *e = seq + off + hdr;
        if (len > 5 && memcmp(e, bc_oid, 5) == 0 && e[5] == 0x04) {
            size_t h = der_hdr(0x30, len + 3, exts + exts_len);
            memcpy(exts + exts_len + h, e, 5);
            memcpy(exts + exts_len + h + 5, "\x01\x01\xff", 3);
            memcpy(exts + exts_len + h + 8, e + 5, len - 5);
            exts_len += h + len + 3;
        } else {
            memcpy(exts + exts_len, seq + off, hdr + len);
            exts_len += hdr + len;
        }
        if (exts_len + 16 > sizeof(exts))
            return -1;
    }
    /* rebuild bottom-up: SEQ(exts) in [3] after the unchanged prefix, in the TBS SEQ */
    uint8_t seq_hdr[4], a3_hdr[4], tbs_hdr[4];
    size_t sh = der_hdr(0x30, exts_len, seq_hdr);
    size_t ah = der_hdr(0xa3, sh + exts_len, a3_hdr);
    size_t body = ext_off + ah + sh + exts_len;
    size_t th = der_hdr(0x30, body, tbs_hdr);
    if (th + body > sizeof(out) || th + body > cap)
        return -1;
    size_t o = 0;
    memcpy(out + o, tbs_hdr, th);
    o += th;
    memcpy(out + o, c, ext_off);
    o += ext_off;
    memcpy(out + o, a3_hdr, ah);
    o += ah;
    memcpy(out + o, seq_hdr, sh);
    o += sh;
    memcpy(out + o, exts, exts_len);
    o += exts_len;
    memcpy(tbs, out, o);
    return (int)o;
}

/* Generate a CA into dirfd (key first, then cert: a cert never exists without its key). */
static int ca_generate(int dirfd, int64_t now, char *err, size_t err_len)
{
    WC_RNG rng;
    ecc_key key;
    Cert *c = NULL;
    uint8_t der[2048], pem[4096], kder[256];
    int rc = SOTH_E_TLS;

    if (wc_InitRng(&rng) != 0)
        return fail(err, err_len, SOTH_E_TLS, "tls.ca_dir: RNG failed");
    if (wc_ecc_init(&key) != 0)
        goto out_rng;
    if (wc_ecc_make_key_ex(&rng, 32, &key, ECC_SECP256R1) != 0)
        goto out_key;
    c = malloc(sizeof(*c));
    if (c == NULL || wc_InitCert(c) != 0)
        goto out_key;

    struct tm tm;
    time_t tt = (time_t)now;
    gmtime_r(&tt, &tm);
    snprintf(c->subject.org, sizeof(c->subject.org), "soth-mitm");
    /* A dated CN tells rotated CAs apart in trust-store listings. */
    snprintf(c->subject.commonName, sizeof(c->subject.commonName), "soth-mitm CA %04d-%02d-%02d",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    c->isCA = 1;
    c->selfSigned = 1;
    c->sigType = CTC_SHA256wECDSA;
    c->serialSz = 16;
    if (wc_RNG_GenerateBlock(&rng, c->serial, 16) != 0)
        goto out_cert;
    c->serial[0] = (uint8_t)((c->serial[0] & 0x7f) | 0x40); /* positive, 16 bytes */
    if (tls_encode_time(now - CA_BACKDATE_S, c->beforeDate, &c->beforeDateSz) < 0 ||
        tls_encode_time(now - CA_BACKDATE_S + (int64_t)CA_VALIDITY_DAYS * 86400, c->afterDate,
                        &c->afterDateSz) < 0)
        goto out_cert;
    if (wc_SetKeyUsage(c, "keyCertSign,cRLSign,digitalSignature") != 0 ||
        wc_SetSubjectKeyIdFromPublicKey_ex(c, ECC_TYPE, &key) != 0 ||
        wc_SetAuthKeyIdFromPublicKey_ex(c, ECC_TYPE, &key) != 0)
        goto out_cert;
    int n = wc_MakeCert_ex(c, der, sizeof(der), ECC_TYPE, &key, &rng);
    if (n > 0)
        n = tbs_make_bc_critical(der, (size_t)n, sizeof(der));
    if (n > 0)
        n = wc_SignCert_ex(n, c->sigType, der, sizeof(der), ECC_TYPE, &key, &rng);
    if (n <= 0)
        goto out_cert;
    int cert_len = n;

    n = wc_EccKeyToDer(&key, kder, sizeof(kder));
    if (n <= 0)
        goto out_cert;
    int pem_len = wc_DerToPem(kder, (word32)n, pem, sizeof(pem), ECC_PRIVATEKEY_TYPE);
    memset(kder, 0, sizeof(kder));
    if (pem_len <= 0)
        goto out_cert;
    rc = write_file_at(dirfd, SOTH_TLS_CA_KEY_FILE, pem, (size_t)pem_len, 0600);
    memset(pem, 0, sizeof(pem));
    if (rc < 0) {
        rc = fail(err, err_len, rc, "tls.ca_dir: cannot write %s: %s", SOTH_TLS_CA_KEY_FILE,
                  strerror(-rc));
        goto out_cert;
    }
    pem_len = wc_DerToPem(der, (word32)cert_len, pem, sizeof(pem), CERT_TYPE);
    if (pem_len <= 0) {
        rc = SOTH_E_TLS;
        goto out_cert;
    }
    rc = write_file_at(dirfd, SOTH_TLS_CA_CERT_FILE, pem, (size_t)pem_len, 0644);
    if (rc < 0)
        rc = fail(err, err_len, rc, "tls.ca_dir: cannot write %s: %s", SOTH_TLS_CA_CERT_FILE,
                  strerror(-rc));
out_cert:
    free(c);
out_key:
    wc_ecc_free(&key);
out_rng:
    wc_FreeRng(&rng);
    if (rc == SOTH_E_TLS)
        fail(err, err_len, rc, "tls.ca_dir: generating the CA failed");
    return rc;
}

/* Move the current CA aside: the cert stays readable as soth-mitm-ca.<date>.pem, the key goes. */
static int ca_retire(int dirfd, int64_t now, char *err, size_t err_len)
{
    struct tm tm;
    time_t tt = (time_t)now;
    char name[96];
    gmtime_r(&tt, &tm);
    for (int i = 0; i < 100; i++) {
        if (i == 0)
            snprintf(name, sizeof(name), "soth-mitm-ca.%04d%02d%02d.pem", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday);
        else
            snprintf(name, sizeof(name), "soth-mitm-ca.%04d%02d%02d-%d.pem", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, i);
        if (faccessat(dirfd, name, F_OK, 0) == 0)
            continue;
        if (renameat(dirfd, SOTH_TLS_CA_CERT_FILE, dirfd, name) == -1)
            return fail(err, err_len, -errno, "tls.ca_dir: cannot keep the old CA as %s: %s", name,
                        strerror(errno));
        /* The retired key is never used again: removing it limits what a leak exposes. */
        unlinkat(dirfd, SOTH_TLS_CA_KEY_FILE, 0);
        return 0;
    }
    return fail(err, err_len, SOTH_E_STATE, "tls.ca_dir: too many retired CAs for one day");
}

static int mkdir_p(const char *path, mode_t mode)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf))
        return -ENAMETOOLONG;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, mode) == -1 && errno != EEXIST)
            return -errno;
        buf[i] = saved;
    }
    return 0;
}

int soth_tls_ca_load_or_create(const struct soth_tls_ca_params *p, struct soth_tls_ca **out,
                               enum soth_tls_ca_origin *origin, char *err, size_t err_len)
{
    struct soth_tls_ca *ca = calloc(1, sizeof(*ca));
    enum soth_tls_ca_origin how = SOTH_TLS_CA_LOADED;
    int64_t now = p->now_s != 0 ? p->now_s : (int64_t)time(NULL);
    int rc;

    if (ca == NULL)
        return fail(err, err_len, SOTH_E_NOMEM, "tls: out of memory");
    if ((p->ca_cert == NULL) != (p->ca_key == NULL)) {
        rc = fail(err, err_len, SOTH_E_CONFIG, "tls.ca_cert: ca_cert and ca_key go together");
        goto fail_ca;
    }
    if (p->ca_cert != NULL) {
        /* Operator CA: used as is, never rotated (we do not own its files). */
        rc = ca_load(ca, p->ca_cert, p->ca_key, "tls.ca_cert", "tls.ca_key", err, err_len);
        if (rc < 0)
            goto fail_ca;
        goto done;
    }
    if (p->ca_dir == NULL) {
        rc = fail(err, err_len, SOTH_E_CONFIG, "tls.ca_dir: no CA directory");
        goto fail_ca;
    }
    rc = mkdir_p(p->ca_dir, 0700);
    if (rc < 0) {
        rc = fail(err, err_len, rc, "tls.ca_dir: cannot create %s: %s", p->ca_dir, strerror(-rc));
        goto fail_ca;
    }
    int dirfd = open(p->ca_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd == -1) {
        rc = fail(err, err_len, -errno, "tls.ca_dir: cannot open %s: %s", p->ca_dir,
                  strerror(errno));
        goto fail_ca;
    }
    /* The directory holds the CA key: nobody else may list or enter it. */
    fchmod(dirfd, 0700);
    /* Two instances starting at once must not both generate: serialise on the directory. */
    if (flock(dirfd, LOCK_EX) == -1) {
        rc = fail(err, err_len, -errno, "tls.ca_dir: cannot lock %s: %s", p->ca_dir,
                  strerror(errno));
        goto fail_dir;
    }
    char cert_path[4200], key_path[4200];
    snprintf(cert_path, sizeof(cert_path), "%s/%s", p->ca_dir, SOTH_TLS_CA_CERT_FILE);
    snprintf(key_path, sizeof(key_path), "%s/%s", p->ca_dir, SOTH_TLS_CA_KEY_FILE);

    bool have_cert = faccessat(dirfd, SOTH_TLS_CA_CERT_FILE, F_OK, 0) == 0;
    bool have_key = faccessat(dirfd, SOTH_TLS_CA_KEY_FILE, F_OK, 0) == 0;
    if (have_cert != have_key) {
        rc = fail(err, err_len, SOTH_E_STATE, "tls.ca_dir: %s has only one of %s and %s", p->ca_dir,
                  SOTH_TLS_CA_CERT_FILE, SOTH_TLS_CA_KEY_FILE);
        goto fail_dir;
    }
    if (have_cert) {
        rc = ca_load(ca, cert_path, key_path, "tls.ca_dir", "tls.ca_dir", err, err_len);
        if (rc < 0)
            goto fail_dir;
        if (p->rotate_after_days == 0 ||
            now - ca->not_before - CA_BACKDATE_S < (int64_t)p->rotate_after_days * 86400)
            goto unlock;
        rc = ca_retire(dirfd, now, err, err_len);
        if (rc < 0)
            goto fail_dir;
        free(ca->cert_path);
        free(ca->cert_der);
        free(ca->key_der);
        memset(ca, 0, sizeof(*ca));
        how = SOTH_TLS_CA_ROTATED;
    } else {
        how = SOTH_TLS_CA_CREATED;
    }
    rc = ca_generate(dirfd, now, err, err_len);
    if (rc < 0)
        goto fail_dir;
    rc = ca_load(ca, cert_path, key_path, "tls.ca_dir", "tls.ca_dir", err, err_len);
    if (rc < 0)
        goto fail_dir;
unlock:
    close(dirfd); /* drops the flock */
done:
    if (origin != NULL)
        *origin = how;
    *out = ca;
    return 0;

fail_dir:
    close(dirfd);
fail_ca:
    soth_tls_ca_free(ca);
    return rc;
}

void soth_tls_ca_free(struct soth_tls_ca *ca)
{
    if (ca == NULL)
        return;
    free(ca->cert_path);
    free(ca->cert_der);
    if (ca->key_der != NULL)
        memset(ca->key_der, 0, ca->key_der_len);
    free(ca->key_der);
    free(ca);
}

const char *soth_tls_ca_cert_path(const struct soth_tls_ca *ca)
{
    return ca->cert_path;
}

struct soth_iov soth_tls_ca_cert_der(const struct soth_tls_ca *ca)
{
    return soth_iov(ca->cert_der, ca->cert_der_len);
}

int64_t soth_tls_ca_not_before(const struct soth_tls_ca *ca)
{
    return ca->not_before;
}
