package keyserver

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"time"
)

// LoadOrCreateKey reads the ECDSA P-256 private key in the PKCS #8 PEM file
// at path, or makes one and writes it there (readable by its owner only)
// when the file does not exist. pbnd keeps its TLS key and the first
// administrator's key this way.
func LoadOrCreateKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("keyserver: key: %w", err)
	}
	return ParseKey(b)
}

// ParseKey parses an ECDSA private key in a PKCS #8 PEM block.
func ParseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("keyserver: key: no PRIVATE KEY PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	clear(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("keyserver: key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("keyserver: key: %T, want an ECDSA key", k)
	}
	return ek, nil
}

// MarshalKey returns k as a PKCS #8 PEM block. The caller wipes it.
func MarshalKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("keyserver: key: %w", err)
	}
	defer clear(der)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// NewKey makes an ECDSA P-256 key, the kind that keeps TLS handshakes
// cheap.
func NewKey() (crypto.Signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("keyserver: key: %w", err)
	}
	return k, nil
}

func createKey(path string) (crypto.Signer, error) {
	k, err := NewKey()
	if err != nil {
		return nil, err
	}
	b, err := MarshalKey(k)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keyserver: key: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("keyserver: key: %w", err)
	}
	return k, nil
}

// PublicKey returns the DER SubjectPublicKeyInfo of k's public key: what a
// key file pins (keyfile.Server.PublicKey) and what the server knows a
// device or administrator by.
func PublicKey(k crypto.Signer) ([]byte, error) {
	b, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		return nil, fmt.Errorf("keyserver: public key: %w", err)
	}
	return b, nil
}

// selfSigned makes a certificate for k that only carries the key: neither
// side checks names, chains or validity, because the pre-boot clock is not
// trusted; the peer's key is what is checked (the pin on the client, the
// enrolled key on the server).
func selfSigned(k crypto.Signer, name string) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("keyserver: certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("keyserver: certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k, Leaf: leaf}, nil
}
