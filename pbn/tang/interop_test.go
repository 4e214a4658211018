package tang

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pbn-project/pbn/internal/testenv"
)

// TestClientAgainstTangd binds the PBN client to Debian's tangd, rotates
// tangd's keys with tangd-rotate-keys, recovers through the hidden key,
// and checks that retiring it ends the binding.
func TestClientAgainstTangd(t *testing.T) {
	dir, pin := tangdKeys(t)
	url := startTangd(t, dir)
	h := header(url, pin)

	params, want, err := Factor{}.Enroll(testContext(t), h)
	if err != nil {
		t.Fatalf("Enroll() against tangd = %v", err)
	}
	got, err := Factor{}.Recover(testContext(t), h, params)
	if err != nil || !got.Equal(want) {
		t.Fatalf("Recover() against tangd = %v, want Enroll's secret", err)
	}
	old, _ := parseParams(params)

	rotate := testenv.Command(t, "/usr/libexec/tangd-rotate-keys")
	if out, err := exec.Command(rotate, "-d", dir).CombinedOutput(); err != nil {
		t.Fatalf("tangd-rotate-keys: %v\n%s", err, out)
	}
	got, err = Factor{}.Recover(testContext(t), h, params)
	if err != nil || !got.Equal(want) {
		t.Fatalf("Recover() after tangd-rotate-keys = %v, want Enroll's secret", err)
	}
	// The old pin still checks the new advertisement (GET /adv/{old thp}).
	keys, err := (&Client{}).Advertisement(testContext(t), url, pin)
	if err != nil {
		t.Fatalf("Advertisement(old pin) after rotation = %v", err)
	}
	if len(keys) != 1 || keys[0].ID == old.key.ID {
		t.Errorf("Advertisement() after rotation = %v, want one new exchange key", keys)
	}
	newPin := tangdPin(t, dir)
	if _, _, err := (Factor{}).Enroll(testContext(t), header(url, newPin)); err != nil {
		t.Errorf("Enroll(new pin) = %v", err)
	}

	hidden, _ := filepath.Glob(filepath.Join(dir, ".*.jwk"))
	for _, f := range hidden {
		os.Remove(f)
	}
	if _, err := (Factor{}).Recover(testContext(t), h, params); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Recover() after removing the old keys = %v, want ErrUnknownKey", err)
	}
}

// TestHandlerReadsTangdKeys: the handler serves a directory made by
// tangd-keygen, and the PBN client recovers through it a binding made
// against tangd itself.
func TestHandlerReadsTangdKeys(t *testing.T) {
	dir, pin := tangdKeys(t)
	url := startTangd(t, dir)
	params, want, err := Factor{}.Enroll(testContext(t), header(url, pin))
	if err != nil {
		t.Fatal(err)
	}
	_, srv := serve(t, mustLoad(t, dir))
	p, _ := parseParams(params)
	p.server.URL = srv.URL
	moved, err := p.marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Factor{}.Recover(testContext(t), header(srv.URL, pin), moved)
	if err != nil || !got.Equal(want) {
		t.Errorf("Recover() through the handler on tangd's keys = %v, want Enroll's secret", err)
	}
}

// clevis runs Debian's clevis with stdin and returns its stdout.
func clevis(t *testing.T, stdin []byte, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(testenv.Command(t, "clevis"), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	// clevis uses curl: keep any proxy setting away from loopback.
	cmd.Env = append(os.Environ(), "no_proxy=127.0.0.1", "NO_PROXY=127.0.0.1",
		"http_proxy=", "HTTP_PROXY=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("clevis %v: %w: %s", args, err, stderr.Bytes())
	}
	return out, nil
}

// TestClevisAgainstHandler: Debian's clevis encrypts and decrypts with
// the PBN handler as its Tang server, before and after a rotation, and
// cannot decrypt once the old keys are retired.
func TestClevisAgainstHandler(t *testing.T) {
	dir, ks := newKeyDir(t)
	handler, srv := serve(t, ks)
	secretText := []byte("the disk's passphrase")
	config := func(pin []byte) string {
		return fmt.Sprintf(`{"url":%q,"thp":%q}`, srv.URL, thumbprintOfPin(t, pin))
	}

	jwe, err := clevis(t, secretText, "encrypt", "tang", config(ks.Pin()))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := clevis(t, jwe, "decrypt"); err != nil || !bytes.Equal(got, secretText) {
		t.Fatalf("clevis decrypt = %q, %v, want %q", got, err, secretText)
	}
	if got := jweCurve(t, jwe); got != CurveP521 {
		t.Errorf("clevis bound to an exchange key on %s, want Tang's default %s", got, CurveP521)
	}

	if err := RotateKeys(dir); err != nil {
		t.Fatal(err)
	}
	rotated := mustLoad(t, dir)
	handler.SetKeys(rotated)
	if got, err := clevis(t, jwe, "decrypt"); err != nil || !bytes.Equal(got, secretText) {
		t.Fatalf("clevis decrypt after rotation = %q, %v, want %q", got, err, secretText)
	}
	jwe2, err := clevis(t, secretText, "encrypt", "tang", config(rotated.Pin()))
	if err != nil {
		t.Fatalf("clevis encrypt after rotation: %v", err)
	}

	if _, err := RetireKeys(dir); err != nil {
		t.Fatal(err)
	}
	handler.SetKeys(mustLoad(t, dir))
	if _, err := clevis(t, jwe, "decrypt"); err == nil {
		t.Errorf("clevis decrypt of a retired key's JWE succeeded, want a failure")
	}
	if got, err := clevis(t, jwe2, "decrypt"); err != nil || !bytes.Equal(got, secretText) {
		t.Errorf("clevis decrypt with the current keys = %q, %v, want %q", got, err, secretText)
	}
}

// jweCurve returns the curve of the ephemeral key in a compact JWE's
// protected header (RFC 7516 section 7.1, RFC 7518 section 4.6.1.1).
func jweCurve(t *testing.T, jwe []byte) string {
	t.Helper()
	hdr, _, _ := bytes.Cut(jwe, []byte("."))
	b, err := b64.DecodeString(string(hdr))
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		EPK struct {
			Crv string `json:"crv"`
		} `json:"epk"`
	}
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h.EPK.Crv
}
