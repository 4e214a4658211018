package tang

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/pbn-project/pbn/keyfile"
)

// paramsV1 is version 1 of the parameters:
//
//	{"v":1,"url":"http://tang.example","pin":"<base64url DER SPKI>",
//	 "key":<the server's exchange key, a public ECMR JWK>,
//	 "clt":<the client's point C, a public EC JWK on the same curve>}
//
// The key ID is not stored: it is the key's thumbprint.
type paramsV1 struct {
	V   int             `json:"v"`
	URL string          `json:"url"`
	Pin string          `json:"pin"`
	Key json.RawMessage `json:"key"`
	Clt json.RawMessage `json:"clt"`
}

func (p *params) marshalV1() ([]byte, error) {
	crv, err := curveNamed(p.key.Curve)
	if err != nil {
		return nil, err
	}
	return json.Marshal(paramsV1{
		V:   1,
		URL: p.server.URL,
		Pin: b64.EncodeToString(p.server.PublicKey),
		Key: p.key.JWK(),
		Clt: publicJWK(crv, p.client, "").marshal(),
	})
}

func parseParamsV1(b []byte) (*params, error) {
	var w paramsV1
	if err := decodeStrict(b, &w); err != nil {
		return nil, fmt.Errorf("parse parameters: %w", err)
	}
	if _, err := endpoint(w.URL, ""); err != nil {
		return nil, fmt.Errorf("parse parameters: %w", err)
	}
	pin, err := b64.DecodeString(w.Pin)
	if err != nil {
		return nil, errors.New("parse parameters: pin is not base64url")
	}
	// The pin's kind of key is the transport's business: plain Tang pins
	// an ES512 key, PBN mode may pin its TLS key.
	if _, err := x509.ParsePKIXPublicKey(pin); err != nil {
		return nil, fmt.Errorf("parse parameters: pin: %w", err)
	}
	key, err := ParseExchangeKey(w.Key)
	if err != nil {
		return nil, fmt.Errorf("parse parameters: %w", err)
	}
	clt, err := parseJWK(w.Clt)
	if err != nil {
		return nil, fmt.Errorf("parse parameters: client point: %w", err)
	}
	if clt.d != nil || clt.crv.name != key.Curve || clt.alg != "" || clt.keyOps != nil {
		clt.d.Wipe()
		return nil, errors.New("parse parameters: client point is not a bare public key on the server key's curve")
	}
	p := &params{server: keyfile.Server{URL: w.URL, PublicKey: pin}, key: key, client: clt.point()}
	if again, err := p.marshalV1(); err != nil || !bytes.Equal(again, b) {
		return nil, errors.New("parse parameters: not in canonical form")
	}
	return p, nil
}
