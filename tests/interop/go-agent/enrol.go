package main

// Enrolment: with -token the agent sends its bootstrap token as `Authorization: Bearer` and
// accepts OpAMP connection settings; with -csr it also sends a certificate signing request
// (ECDSA P-256, its instance uid as common name and urn:uuid SAN) in ConnectionSettingsRequest.
// When the server offers a certificate (for its key, or with a key the server made), it prints
// "certificate fingerprint=<sha256 hex>" and reconnects with it over mTLS, without the token,
// then prints "reconnected fingerprint=<sha256 hex>".

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"

	"github.com/google/uuid"
	"github.com/open-telemetry/opamp-go/protobufs"
)

// enrolment is what the agent keeps between asking for a certificate and using it.
type enrolment struct {
	// The key of the CSR; nil when the server is to make one.
	key *ecdsa.PrivateKey
	// Certificates offered and ready to use, at most one waiting.
	certificates chan tls.Certificate
}

func newEnrolment() *enrolment {
	return &enrolment{certificates: make(chan tls.Certificate, 1)}
}

// request makes a key and a CSR naming uid, and returns the CSR as PEM.
func (e *enrolment) request(uid uuid.UUID) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	urn, err := url.Parse("urn:uuid:" + uid.String())
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: uid.String()},
		URIs:    []*url.URL{urn},
	}, key)
	if err != nil {
		return nil, err
	}
	e.key = key
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// onSettings takes an offered certificate: with the CSR's key, or the key offered with it.
func (e *enrolment) onSettings(_ context.Context, settings *protobufs.OpAMPConnectionSettings) error {
	offered := settings.GetCertificate()
	if offered == nil || len(offered.GetCert()) == 0 {
		return nil
	}
	keyPEM := offered.GetPrivateKey()
	if len(keyPEM) == 0 {
		if e.key == nil {
			return errors.New("a certificate without a key, and no CSR was sent")
		}
		der, err := x509.MarshalECPrivateKey(e.key)
		if err != nil {
			return err
		}
		keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	pair, err := tls.X509KeyPair(offered.GetCert(), keyPEM)
	if err != nil {
		return fmt.Errorf("the offered certificate does not fit its key: %w", err)
	}
	say("certificate fingerprint=%s", fingerprint(pair))
	select {
	case e.certificates <- pair:
	default:
	}
	return nil
}

func fingerprint(pair tls.Certificate) string {
	sum := sha256.Sum256(pair.Certificate[0])
	return hex.EncodeToString(sum[:])
}
