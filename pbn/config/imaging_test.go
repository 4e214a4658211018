package config

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const imagingExample = `{"version": 1, "imaging": {"payload": "https://10.99.0.1:8443/os.img",
 "kernel": "https://10.99.0.1:8443/vmlinuz", "image": "https://10.99.0.1:8443/pbn.img",
 "esp_mib": 24, "overwrite": true}}`

// loadImaging writes imagingExample and ca as imaging-ca.pem into a
// directory and loads it.
func loadImaging(t *testing.T, ca []byte) *Config {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ConfigFile), []byte(imagingExample), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil {
		t.Fatal("Load without imaging-ca.pem succeeded, want an error naming the CA")
	}
	if err := os.WriteFile(filepath.Join(dir, ImagingCAFile), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newCA returns a self-signed CA certificate of its own, as PEM.
func newCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stranger"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestImagingTLS connects to an HTTPS server with the imaging section's
// TLS configuration: the pinned CA and the clock decide. It does not prove
// that the agent uses this configuration for every fetch; the lab's
// imaging test fetches from a server of the pinned CA only.
func TestImagingTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	pinned := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	stranger := newCA(t)

	tests := []struct {
		name string
		ca   []byte
		now  func() time.Time
		ok   bool
	}{
		{"pinned", pinned, time.Now, true},
		{"another CA", stranger, time.Now, false},
		{"clock past the certificate", pinned, func() time.Time { return time.Now().AddDate(200, 0, 0) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := loadImaging(t, tt.ca)
			if !c.HasImaging() || c.Imaging.ESPMiB != 24 || !c.Imaging.Overwrite {
				t.Fatalf("Imaging = %+v", c.Imaging)
			}
			tc, err := c.ImagingTLS(tt.now)
			if err != nil {
				t.Fatal(err)
			}
			client := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.URL, nil)
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			if (err == nil) != tt.ok {
				t.Errorf("GET with CA %s = %v, want success %v", tt.name, err, tt.ok)
			}
		})
	}
	if _, err := loadImaging(t, []byte("not PEM")).ImagingTLS(time.Now); err == nil {
		t.Error("ImagingTLS with a CA file of no certificate succeeded")
	}
}
