/*
 * X.509 certificates made at test time with GnuTLS, for the TLS tests:
 * no files, no external tools, nothing that expires in the repository.
 * Keys are ECDSA P-256 (fast to generate); every PEM string is malloc'd
 * and NUL-terminated. A failure aborts the test (cmocka asserts), so
 * include mig_test.h first.
 */
#ifndef MIG_TLS_CERTS_H
#define MIG_TLS_CERTS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <gnutls/abstract.h>

/* A certificate authority: kept as GnuTLS objects to sign with. */
typedef struct tc_ca {
	gnutls_x509_crt_t crt;
	gnutls_x509_privkey_t key;
	char *pem;              /* its certificate */
} tc_ca;

/* What a leaf certificate is for. */
enum tc_role { TC_SERVER, TC_CLIENT };

static unsigned tc_serial;

/* A malloc'd NUL-terminated copy of what GnuTLS exported. */
static char *tc_take(gnutls_datum_t *d)
{
	char *s = malloc(d->size + 1);
	assert_non_null(s);
	memcpy(s, d->data, d->size);
	s[d->size] = '\0';
	gnutls_free(d->data);
	d->data = NULL;
	return s;
}

static gnutls_x509_privkey_t tc_key_new(void)
{
	gnutls_x509_privkey_t key;
	assert_int_equal(gnutls_x509_privkey_init(&key), 0);
	assert_int_equal(gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
			GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0), 0);
	return key;
}

/* A certificate for `key` named `cn`, valid from `act` to `exp`, not yet
 * signed. */
static gnutls_x509_crt_t tc_crt_new(gnutls_x509_privkey_t key, const char *cn,
				    time_t act, time_t exp)
{
	gnutls_x509_crt_t crt;
	char dn[300];
	const char *errp = NULL;
	unsigned char serial[8] = { 0x01 };
	unsigned char kid[64];
	size_t kid_len = sizeof(kid);

	serial[4] = (unsigned char)(++tc_serial >> 24);
	serial[5] = (unsigned char)(tc_serial >> 16);
	serial[6] = (unsigned char)(tc_serial >> 8);
	serial[7] = (unsigned char)tc_serial;
	snprintf(dn, sizeof(dn), "CN=%s", cn);

	assert_int_equal(gnutls_x509_crt_init(&crt), 0);
	assert_int_equal(gnutls_x509_crt_set_version(crt, 3), 0);
	assert_int_equal(gnutls_x509_crt_set_serial(crt, serial,
						    sizeof(serial)), 0);
	assert_int_equal(gnutls_x509_crt_set_dn(crt, dn, &errp), 0);
	assert_int_equal(gnutls_x509_crt_set_key(crt, key), 0);
	assert_int_equal(gnutls_x509_crt_set_activation_time(crt, act), 0);
	assert_int_equal(gnutls_x509_crt_set_expiration_time(crt, exp), 0);
	assert_int_equal(gnutls_x509_crt_get_key_id(crt, 0, kid, &kid_len), 0);
	assert_int_equal(gnutls_x509_crt_set_subject_key_id(crt, kid,
							    kid_len), 0);
	return crt;
}

/* A self-signed CA named `cn` (CA:TRUE, keyCertSign), valid a day either
 * side of now so that leaves may be made expired or valid under it. */
static void tc_ca_make(tc_ca *ca, const char *cn)
{
	time_t now = time(NULL);
	gnutls_datum_t d = { 0 };

	ca->key = tc_key_new();
	ca->crt = tc_crt_new(ca->key, cn, now - 86400, now + 86400);
	assert_int_equal(gnutls_x509_crt_set_basic_constraints(ca->crt, 1,
							       -1), 0);
	assert_int_equal(gnutls_x509_crt_set_key_usage(ca->crt,
			GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN), 0);
	assert_int_equal(gnutls_x509_crt_sign2(ca->crt, ca->crt, ca->key,
					       GNUTLS_DIG_SHA256, 0), 0);
	assert_int_equal(gnutls_x509_crt_export2(ca->crt, GNUTLS_X509_FMT_PEM,
						 &d), 0);
	ca->pem = tc_take(&d);
}

static void tc_ca_free(tc_ca *ca)
{
	if (ca->crt)
		gnutls_x509_crt_deinit(ca->crt);
	if (ca->key)
		gnutls_x509_privkey_deinit(ca->key);
	free(ca->pem);
	memset(ca, 0, sizeof(*ca));
}

/*
 * A leaf certificate for the host `dns` (CN and subjectAltName DNS), for
 * a TLS server or client as `role` says (extended key usage), signed by
 * `ca`, valid from `act` to `exp`. Its certificate and private key come
 * back as malloc'd PEM strings.
 */
static void tc_leaf_make(const tc_ca *ca, const char *dns, enum tc_role role,
			 time_t act, time_t exp, char **cert_pem,
			 char **key_pem)
{
	gnutls_x509_privkey_t key = tc_key_new();
	gnutls_x509_crt_t crt = tc_crt_new(key, dns, act, exp);
	gnutls_datum_t d = { 0 };

	assert_int_equal(gnutls_x509_crt_set_subject_alt_name(crt,
			GNUTLS_SAN_DNSNAME, dns, (unsigned)strlen(dns),
			GNUTLS_FSAN_SET), 0);
	assert_int_equal(gnutls_x509_crt_set_basic_constraints(crt, 0, -1), 0);
	assert_int_equal(gnutls_x509_crt_set_key_usage(crt,
			GNUTLS_KEY_DIGITAL_SIGNATURE), 0);
	assert_int_equal(gnutls_x509_crt_set_key_purpose_oid(crt,
			role == TC_SERVER ? GNUTLS_KP_TLS_WWW_SERVER :
					    GNUTLS_KP_TLS_WWW_CLIENT, 0), 0);
	assert_int_equal(gnutls_x509_crt_sign2(crt, ca->crt, ca->key,
					       GNUTLS_DIG_SHA256, 0), 0);

	assert_int_equal(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM,
						 &d), 0);
	*cert_pem = tc_take(&d);
	assert_int_equal(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM,
						     &d), 0);
	*key_pem = tc_take(&d);

	gnutls_x509_crt_deinit(crt);
	gnutls_x509_privkey_deinit(key);
}

#endif /* MIG_TLS_CERTS_H */
