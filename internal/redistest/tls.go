package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles are the PEM files of a test CA, a server certificate it signed
// (for 127.0.0.1 and localhost), a client certificate it signed, and a
// second CA that signed nothing of these (for "unknown CA" tests).
type TLSFiles struct {
	Dir                       string
	CA, ServerCert, ServerKey string
	ClientCert, ClientKey     string
	OtherCA                   string
	caPool                    *x509.CertPool
	clientCert                tls.Certificate
}

// ClientConfig is a TLS config trusting the test CA and presenting the
// client certificate.
func (f *TLSFiles) ClientConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: f.caPool, Certificates: []tls.Certificate{f.clientCert}, ServerName: "127.0.0.1"}
}

// NewTLSFiles writes a fresh CA and certificates into a temporary
// directory.
func NewTLSFiles(tb testing.TB) *TLSFiles {
	tb.Helper()
	dir := tb.TempDir()
	f := &TLSFiles{Dir: dir}
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			tb.Fatal(err)
		}
		return path
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		return k
	}
	serial := int64(1)
	cert := func(tmpl *x509.Certificate, parent *x509.Certificate, pub, signer any) (*x509.Certificate, []byte) {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			tb.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			tb.Fatal(err)
		}
		return c, der
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		b, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	caKey := key()
	ca, caDER := cert(&x509.Certificate{Subject: pkix.Name{CommonName: "mycelium test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, &caKey.PublicKey, caKey)
	f.CA = write("ca.crt", "CERTIFICATE", caDER)
	srvKey := key()
	_, srvDER := cert(&x509.Certificate{Subject: pkix.Name{CommonName: "redis test server"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}, ca, &srvKey.PublicKey, caKey)
	f.ServerCert, f.ServerKey = write("server.crt", "CERTIFICATE", srvDER), write("server.key", "EC PRIVATE KEY", keyDER(srvKey))
	cliKey := key()
	_, cliDER := cert(&x509.Certificate{Subject: pkix.Name{CommonName: "mycelium test client"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}, ca, &cliKey.PublicKey, caKey)
	f.ClientCert, f.ClientKey = write("client.crt", "CERTIFICATE", cliDER), write("client.key", "EC PRIVATE KEY", keyDER(cliKey))
	otherKey := key()
	_, otherDER := cert(&x509.Certificate{Subject: pkix.Name{CommonName: "another CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, &otherKey.PublicKey, otherKey)
	f.OtherCA = write("other-ca.crt", "CERTIFICATE", otherDER)
	f.caPool = x509.NewCertPool()
	f.caPool.AddCert(ca)
	var err error
	if f.clientCert, err = tls.LoadX509KeyPair(f.ClientCert, f.ClientKey); err != nil {
		tb.Fatal(err)
	}
	return f
}

// StartTLS runs redis-server with TLS only (no plain port) on a free
// loopback port, with f's server certificate; authClients is its
// tls-auth-clients ("yes": mutual TLS, "no"). Its URL is rediss://.
func StartTLS(tb testing.TB, f *TLSFiles, authClients string, extra ...string) *Server {
	tb.Helper()
	return launch(tb, f, append([]string{"--tls-cert-file", f.ServerCert, "--tls-key-file", f.ServerKey,
		"--tls-ca-cert-file", f.CA, "--tls-auth-clients", authClients}, extra...))
}
