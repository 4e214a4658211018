package keyserver

import (
	"encoding/json"
	"testing"
)

// messages makes an empty value of every message type of the wire format.
var messages = []func() versioned{
	func() versioned { return &enrollV1{} },
	func() versioned { return &provisioningV1{} },
	func() versioned { return &claimV1{} },
	func() versioned { return &claimedV1{} },
	func() versioned { return &bindingV1{} },
	func() versioned { return &okV1{} },
	func() versioned { return &errorV1{} },
	func() versioned { return &devicesV1{} },
	func() versioned { return &deviceStateV1{} },
	func() versioned { return &recoveryRequestV1{} },
	func() versioned { return &recoveryV1{} },
	func() versioned { return &policyV1{} },
	func() versioned { return &eventV1{} },
	func() versioned { return &unlockV1{} },
	func() versioned { return &unlockedV1{} },
	func() versioned { return &exchangeKeyV1{} },
	func() versioned { return &adminFileV1{} },
	func() versioned { return &signInV1{} },
	func() versioned { return &signedInV1{} },
	func() versioned { return &ownerRemoveV1{} },
	func() versioned { return &adminAddV1{} },
	func() versioned { return &adminsV1{} },
	func() versioned { return &adminRemoveV1{} },
}

var seeds = []string{
	`{"v":1,"binding":"0123456789abcdef0123456789abcdef"}`,
	`{"v":1,"device":"0123456789abcdef0123456789abcdef","hostname":"h","group":"g",` +
		`"device_key":"AQID","binding":"0123456789abcdef0123456789abcdef"}`,
	`{"v":1,"account":"a@b","password":"cHc=","key_file":"0123456789abcdef0123456789abcdef",` +
		`"recovery_key":"MTIz"}`,
	`{"v":1,"binding":"0123456789abcdef0123456789abcdef","kid":"k","x":"BAEC"}`,
	`{"v":1,"binding":"0123456789abcdef0123456789abcdef","kid":"k","x":"BAEC","account":"a@b",` +
		`"password":"cHc="}`,
	`{"v":1,"policy":{"group":"g","provisioning":true,"autoboot":true,"offline_limit":0,` +
		`"administrators":null,"pcrs":[7],"users_per_device":1,"allowed_groups":null}}`,
	`{"v":1,"seq":1,"time":"2026-01-01T00:00:00Z","kind":"unlock","actor":"device"}`,
	`{"v":1,"code":"device-lost","message":"m"}`,
	`{"v":1,"devices":[{"id":"0123456789abcdef0123456789abcdef","hostname":"h","group":"g",` +
		`"state":"lost","enrolled":"2026-01-01T00:00:00Z","changed":"2026-01-01T00:00:00Z"}]}`,
	`{"v":1,"account":"a@b","password":"cHc=","key_file":"0123456789abcdef0123456789abcdef",` +
		`"open":"0123456789abcdef0123456789abcdef",` +
		`"recoveries":[{"key_file":"0123456789abcdef0123456789abcdef","at":"2026-01-01T00:00:00Z"}]}`,
	`{"v":1,"account":"b","password":"cHc=","new_key_file":"0123456789abcdef0123456789abcdef",` +
		`"recovery_key":"MTIz","open":"00000000000000000000000000000001"}`,
	`{"v":1,"upn":"a@b","sid":"S-1-5-21-1-2-3-1","kind":"user","time":"2026-01-01T00:00:00Z",` +
		`"policy":{"group":"g","provisioning":true,"autoboot":true,"offline_limit":0,` +
		`"administrators":null,"pcrs":[7],"users_per_device":1,"allowed_groups":null},` +
		`"recovery_key":"MTIz"}`,
	`{"v":1,"sid":"S-1-5-21-1-2-3-1","reason":"left"}`,
	`{"v":1,"device":"0123456789abcdef0123456789abcdef","hostname":"h","group":"g",` +
		`"device_key":"AQID","owner":"a@b","owner_key_file":"0123456789abcdef0123456789abcdef",` +
		`"recovery_key":"MTIz"}`,
	`{"v":1,"url":"https://k","server_key":"AQID","policy":{"group":"g","provisioning":true,` +
		`"autoboot":true,"offline_limit":0,"administrators":null,"pcrs":[7],"users_per_device":1,` +
		`"allowed_groups":null},"owner":{"v":1,"upn":"a@b","sid":"S-1-5-21-1-2-3-1","primary":true,` +
		`"groups":[{"sid":"S-1-5-21-1-2-3-513","name":"g","key":"AQID"}],"enterprise_key":"AQID",` +
		`"policy":{"group":"g","provisioning":true,"autoboot":true,"offline_limit":0,` +
		`"administrators":null,"pcrs":[7],"users_per_device":1,"allowed_groups":null}}}`,
	`{"v":1,"account":"a@b","password":"cHc=","key_file":"0123456789abcdef0123456789abcdef",` +
		`"open":"0123456789abcdef0123456789abcdef","reason":"first-sign-in"}`,
	`{"v":1,"name":"imaging","role":"enroll","key":"MFkwEwYHKoZIzj0CAQ=="}`,
	`{"v":1,"admins":[{"name":"imaging","role":"enroll","added":"2026-01-01T00:00:00Z"}]}`,
	`{"v":1,"name":"imaging","reason":"image rebuilt"}`,
	`{"v":2}`, `{"v":1}{}`, `[]`, `{"v":1,"x":"` + "\xff" + `"}`,
}

// FuzzDecode feeds every message type arbitrary bytes: decodeV1 never
// panics, and what it accepts encodes and decodes again to an accepted
// message.
func FuzzDecode(f *testing.F) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, mk := range messages {
			m := mk()
			if decodeV1(b, m) != nil {
				continue
			}
			again, err := json.Marshal(m)
			if err != nil {
				t.Fatalf("%T: Marshal of an accepted message: %v", m, err)
			}
			if err := decodeV1(again, mk()); err != nil {
				t.Fatalf("%T: %q accepted, but its encoding %q is not: %v", m, b, again, err)
			}
		}
	})
}

// FuzzParseAdminFile: ParseAdminFile never panics on arbitrary bytes.
func FuzzParseAdminFile(f *testing.F) {
	f.Add([]byte(`{"v":1,"name":"admin","url":"https://h","server_key":"AQ==","key":"AQ=="}`))
	f.Add([]byte(`{"v":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if a, err := ParseAdminFile(b); err == nil && a.Key == nil {
			t.Fatalf("ParseAdminFile(%q) accepted a file without a key", b)
		}
	})
}
