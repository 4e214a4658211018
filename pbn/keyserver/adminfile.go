package keyserver

import (
	"crypto"
	"encoding/json"
	"fmt"
	"os"
)

// AdminFile is what an administrator's tool (pbnctl) needs to reach a key
// server: the server's URL and pinned key, and the administrator's name
// and private key. pbnd writes one for its first administrator into its
// data directory; it is readable by its owner only, since it holds the
// key.
type AdminFile struct {
	Name      string
	URL       string
	ServerKey []byte
	Key       crypto.Signer
}

// adminFileV1 is an AdminFile on disk, version 1: JSON, Key a PKCS #8 PEM
// block.
type adminFileV1 struct {
	v1
	Name      string `json:"name"`
	URL       string `json:"url"`
	ServerKey []byte `json:"server_key"`
	Key       []byte `json:"key"`
}

func (m *adminFileV1) check() error {
	var c checks
	c.text("name", m.Name, maxName, true)
	c.text("url", m.URL, maxName, true)
	c.bytes("server_key", m.ServerKey, true)
	c.bytes("key", m.Key, true)
	return c.err()
}

// WriteAdminFile writes a to a new file at path, readable by its owner
// only.
func WriteAdminFile(path string, a *AdminFile) error {
	pemKey, err := MarshalKey(a.Key)
	if err != nil {
		return err
	}
	defer clear(pemKey)
	b, err := json.MarshalIndent(&adminFileV1{v1{wireV1}, a.Name, a.URL, a.ServerKey, pemKey}, "", "\t")
	if err != nil {
		return fmt.Errorf("keyserver: administrator file: %w", err)
	}
	defer clear(b)
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("keyserver: administrator file: %w", err)
	}
	return nil
}

// ReadAdminFile reads the administrator file at path.
func ReadAdminFile(path string) (*AdminFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keyserver: administrator file: %w", err)
	}
	defer clear(b)
	a, err := ParseAdminFile(b)
	if err != nil {
		return nil, fmt.Errorf("keyserver: administrator file %s: %w", path, err)
	}
	return a, nil
}

// ParseAdminFile parses the contents of an administrator file strictly.
func ParseAdminFile(b []byte) (*AdminFile, error) {
	var m adminFileV1
	if err := decodeV1(b, &m); err != nil {
		return nil, err
	}
	defer clear(m.Key)
	k, err := ParseKey(m.Key)
	if err != nil {
		return nil, err
	}
	return &AdminFile{Name: m.Name, URL: m.URL, ServerKey: m.ServerKey, Key: k}, nil
}

// Client returns a client that acts as the file's administrator.
func (a *AdminFile) Client() (*Client, error) {
	return NewClient(a.URL, a.ServerKey, a.Key)
}
