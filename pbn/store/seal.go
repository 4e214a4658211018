package store

import (
	"crypto/cipher"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/pbn-project/pbn/pbn/secret"
)

// MasterKeySize is the size of the master key in bytes.
const MasterKeySize = chacha20poly1305.KeySize

// sealVersion is the first byte of every sealed blob. A blob is
// sealVersion, a 24-byte XChaCha20-Poly1305 nonce, and the ciphertext with
// its tag.
const sealVersion = 1

// LoadMasterKey reads the master key from the file at path. When the file
// does not exist and create is true, it makes a random key and writes it
// there, readable by its owner only. The file holds the raw key: keep it
// off the database's backups, or a stolen backup opens every secret.
func LoadMasterKey(path string, create bool) (secret.Bytes, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		return createMasterKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("store: master key: %w", err)
	}
	k := secret.Bytes(b)
	if len(k) != MasterKeySize {
		k.Wipe()
		return nil, fmt.Errorf("store: master key %s: want %d bytes", path, MasterKeySize)
	}
	return k, nil
}

func createMasterKey(path string) (secret.Bytes, error) {
	k := secret.Random(MasterKeySize)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		k.Wipe()
		return nil, fmt.Errorf("store: master key: %w", err)
	}
	_, err = f.Write(k)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		k.Wipe()
		os.Remove(path)
		return nil, fmt.Errorf("store: master key: %w", err)
	}
	return k, nil
}

// sealer encrypts secrets for the database under the master key. The
// associated data names what a blob is for and whose it is, so that a blob
// copied to another row does not open there.
type sealer struct {
	key  secret.Bytes
	aead cipher.AEAD
}

func newSealer(masterKey secret.Bytes) (*sealer, error) {
	if len(masterKey) != MasterKeySize {
		return nil, fmt.Errorf("store: master key: want %d bytes, got %d", MasterKeySize, len(masterKey))
	}
	key := masterKey.Clone()
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		key.Wipe()
		return nil, fmt.Errorf("store: master key: %w", err)
	}
	return &sealer{key: key, aead: aead}, nil
}

func (s *sealer) wipe() { s.key.Wipe() }

// sealBlob encrypts plain, bound to purpose.
func (s *sealer) sealBlob(purpose string, plain secret.Bytes) []byte {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	out[0] = sealVersion
	nonce := secret.Random(s.aead.NonceSize())
	copy(out[1:], nonce)
	return s.aead.Seal(out, nonce, plain, []byte(purpose))
}

// open decrypts a blob that sealBlob made for purpose. It returns
// ErrSealed when the blob does not open.
func (s *sealer) open(purpose string, blob []byte) (secret.Bytes, error) {
	n := s.aead.NonceSize()
	if len(blob) < 1+n+s.aead.Overhead() || blob[0] != sealVersion {
		return nil, ErrSealed
	}
	plain, err := s.aead.Open(nil, blob[1:1+n], blob[1+n:], []byte(purpose))
	if err != nil {
		return nil, ErrSealed
	}
	return plain, nil
}
