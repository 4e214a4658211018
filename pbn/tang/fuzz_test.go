package tang

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/pbn-project/pbn/keyfile"
)

// Seeds in tangd's own formats, written by tangd-keygen and jose.
const (
	seedSigJWK   = `{"alg":"ES512","crv":"P-521","d":"AZHAcSs5ooXmNZBzrEDrNqEbYYqMGW7L_TdEaFMWjtHF-xrtDr0b5bq5TIEWX1gwdV24NvZCUNtOp0iyzx17vVTY","key_ops":["sign","verify"],"kty":"EC","x":"AB5upsKBE5_ThgdO-y_1mGvdIoMIMFjZYrWzzypNQL2AVwOYkOoaIxfqFEzU4F5sstjekBWvVJxzJn1aYQdbeA5j","y":"ACzIgyJXFfw61suSzZL-QiFzDr0xIkfjwfCERSlrUDOp8VKfVvC3NwcbuDADZzTdsH0PYy_UHkF02ewrD76aBIQy"}`
	seedExcJWK   = `{"alg":"ECMR","crv":"P-521","key_ops":["deriveKey"],"kty":"EC","x":"AeWlZi7AmvHYRL6-AacZEBjrQx3H8e2VEMhnYSAgONOmlaHRPDQXvHpW_JJUud7aCff48VeHjILtHgdhmcrrOtBF","y":"AaHTHg147-nrNzquIUGft5BciQL8RgDZl5Ok6qQYjwT5oBrgYnIRzgXf0LzdV3aPRX3sUXoN1rZ4U43HKPuJ9y9I"}`
	seedTangdAdv = `{"payload": "eyJrZXlzIjogW3siYWxnIjogIkVDTVIiLCAiY3J2IjogIlAtNTIxIiwgImtleV9vcHMiOiBbImRlcml2ZUtleSJdLCAia3R5IjogIkVDIiwgIngiOiAiQWVXbFppN0FtdkhZUkw2LUFhY1pFQmpyUXgzSDhlMlZFTWhuWVNBZ09OT21sYUhSUERRWHZIcFdfSkpVdWQ3YUNmZjQ4VmVIaklMdEhnZGhtY3JyT3RCRiIsICJ5IjogIkFhSFRIZzE0Ny1uck56cXVJVUdmdDVCY2lRTDhSZ0RabDVPazZxUVlqd1Q1b0JyZ1luSVJ6Z1hmMEx6ZFYzYVBSWDNzVVhvTjFyWjRVNDNIS1B1Sjl5OUkifSwgeyJhbGciOiAiRVM1MTIiLCAiY3J2IjogIlAtNTIxIiwgImtleV9vcHMiOiBbInZlcmlmeSJdLCAia3R5IjogIkVDIiwgIngiOiAiQUI1dXBzS0JFNV9UaGdkTy15XzFtR3ZkSW9NSU1GalpZcld6enlwTlFMMkFWd09Za09vYUl4ZnFGRXpVNEY1c3N0amVrQld2Vkp4ekpuMWFZUWRiZUE1aiIsICJ5IjogIkFDeklneUpYRmZ3NjFzdVN6WkwtUWlGekRyMHhJa2Zqd2ZDRVJTbHJVRE9wOFZLZlZ2QzNOd2NidURBRFp6VGRzSDBQWXlfVUhrRjAyZXdyRDc2YUJJUXkifV19", "protected": "eyJhbGciOiJFUzUxMiIsImN0eSI6Imp3ay1zZXQranNvbiJ9", "signature": "APq8mIOg2FzSYGsYrYHLG1SGwE5z_DwvRh26oS9YbJIWnqOMOrN08L0Iz8Yl8LRdS_lKsV0scckggKN8DrbZ_sXcAIJabGQCXlBMQiz8UNVxIAIB_EnKLdUpja_QVFmTOfmmyF_M6LF1qs7ceK6BX8vlRsyGRUCCpQPB8VxlE1nUPFf3"}`
)

// TestTangdAdvertisementSeed: the advertisement tangd wrote for the seed
// keys verifies against its signing key, so the fuzz seeds start valid.
func TestTangdAdvertisementSeed(t *testing.T) {
	pin, err := PinJWK([]byte(seedSigJWK))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := thumbprintOfPin(t, pin), "TSMxVqU1Bl1qql40Uu46vqi0M2Q7zINhOMhSjBtpeWc"; got != want {
		t.Errorf("PinThumbprint() = %s, want tangd's file name %s", got, want)
	}
	pub, _ := parsePin(pin)
	keys, err := verifyAdvertisement([]byte(seedTangdAdv), pub)
	if err != nil || len(keys) != 2 {
		t.Fatalf("verifyAdvertisement(tangd's) = %d keys, %v, want 2 keys", len(keys), err)
	}
	if got, want := exchangeKey(keys[0]).ID, "gOlvWWDmeH3iVK8Ha07K7lK9vSpm171PylA_nTtonLw"; got != want {
		t.Errorf("exchange key ID = %s, want tangd's file name %s", got, want)
	}
}

func FuzzParseJWK(f *testing.F) {
	f.Add([]byte(seedSigJWK))
	f.Add([]byte(seedExcJWK))
	f.Add([]byte(`{"kty":"EC","crv":"P-256","x":"","y":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := parseJWK(b)
		if err != nil {
			return
		}
		again, err := parseJWK(k.marshal())
		if err != nil {
			t.Fatalf("parseJWK(marshal(%s)) = %v", b, err)
		}
		if !bytes.Equal(again.point(), k.point()) || again.kid() != k.kid() ||
			!bytes.Equal(again.d, k.d) {
			t.Fatalf("parseJWK(marshal(%s)) = a different key", b)
		}
	})
}

func FuzzParsePointJWK(f *testing.F) {
	f.Add([]byte(seedExcJWK), true)
	f.Add([]byte(`{"alg":"ECMR","crv":"P-256","kty":"EC","x":"AA","y":"AA"}`), false)
	f.Fuzz(func(t *testing.T, b []byte, big bool) {
		crv := p256
		if big {
			crv = p521
		}
		p, err := parsePointJWK(b, crv)
		if err != nil {
			return
		}
		if _, err := crv.ecdh.NewPublicKey(p); err != nil {
			t.Fatalf("parsePointJWK(%s) accepted a point off the curve: %v", b, err)
		}
	})
}

func FuzzVerifyAdvertisement(f *testing.F) {
	pin, err := PinJWK([]byte(seedSigJWK))
	if err != nil {
		f.Fatal(err)
	}
	pub, _ := parsePin(pin)
	f.Add([]byte(seedTangdAdv))
	dir := f.TempDir()
	if err := GenerateKeys(dir); err != nil {
		f.Fatal(err)
	}
	ks := mustLoad(f, dir)
	f.Add(ks.Advertisement())
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := verifyAdvertisement(b, pub)
		if err == nil && (len(keys) == 0 || len(keys) > maxAdvKeys) {
			t.Fatalf("verifyAdvertisement() = %d keys", len(keys))
		}
	})
}

func FuzzParseParams(f *testing.F) {
	pin, err := PinJWK([]byte(seedSigJWK))
	if err != nil {
		f.Fatal(err)
	}
	for _, crv := range []*curve{p521, p256} {
		s, _ := crv.ecdh.GenerateKey(rand.Reader)
		key := ExchangeKey{Curve: crv.name, Point: s.PublicKey().Bytes()}
		key.ID = publicJWK(crv, key.Point, algExchange).kid()
		clt, _, err := bind(key)
		if err != nil {
			f.Fatal(err)
		}
		p := &params{server: keyfile.Server{URL: "http://tang.example:8080", PublicKey: pin},
			key: key, client: clt}
		b, err := p.marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseParams(b)
		if err != nil {
			return
		}
		again, err := p.marshal()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("marshal(parseParams(%s)) = %s, %v, want the input", b, again, err)
		}
	})
}
