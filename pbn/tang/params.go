package tang

import (
	"encoding/json"
	"fmt"

	"github.com/pbn-project/pbn/keyfile"
)

// maxParams bounds the parameters a parser accepts.
const maxParams = 4 << 10

// params are the network factor's public parameters: the server bound to,
// its exchange key, and the client's public point C. Their wire form is
// JSON with a version number "v"; each version's form lives in its own
// file (params_v1.go).
type params struct {
	server keyfile.Server
	key    ExchangeKey
	client []byte
}

// marshal writes the newest version.
func (p *params) marshal() ([]byte, error) { return p.marshalV1() }

// parseParams parses parameters of any known version.
func parseParams(b []byte) (*params, error) {
	if len(b) > maxParams {
		return nil, fmt.Errorf("parameters larger than %d bytes", maxParams)
	}
	var v struct {
		V int `json:"v"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("parse parameters: %w", err)
	}
	switch v.V {
	case 1:
		return parseParamsV1(b)
	}
	return nil, fmt.Errorf("parse parameters: unknown version %d", v.V)
}
