package tang

import (
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"sync/atomic"
	"time"
)

// Limits of the handler. A /rec body is a public JWK of about 260 bytes.
const (
	// MaxRequestBody bounds the body of POST /rec/{kid}.
	MaxRequestBody = 4 << 10
	// DefaultBodyTimeout bounds the time a client may take to send a
	// request body.
	DefaultBodyTimeout = 5 * time.Second
)

// Timeouts of the server that NewServer makes.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = 10 * time.Second
	IdleTimeout       = 60 * time.Second
	MaxHeaderBytes    = 8 << 10
)

// Handler serves Tang's protocol (see package doc) for a set of keys:
// GET /adv, GET /adv/{kid} and POST /rec/{kid}. Errors are answered with
// a status and a fixed short text that reveals nothing about the keys: 404
// for an unknown key, 400 for a malformed request or a point not on the
// curve, 413 for a body over MaxRequestBody, 415 for a body that is not
// JSON, 405 for a wrong method, 429 for a client address past its
// exchanges (DefaultClientRate, DefaultClientBurst).
type Handler struct {
	keys    atomic.Pointer[Keys]
	mux     *http.ServeMux
	log     *slog.Logger
	clients atomic.Pointer[clientLimiter]
	// BodyTimeout bounds the time a client may take to send its request
	// body; zero means DefaultBodyTimeout. Set it before serving.
	BodyTimeout time.Duration
}

// NewHandler returns a handler serving keys, with the default limit on
// each client address's exchanges. log receives one debug record a
// refused request; nil discards them.
func NewHandler(keys *Keys, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{mux: http.NewServeMux(), log: log}
	h.SetClientLimit(DefaultClientRate, DefaultClientBurst)
	h.keys.Store(keys)
	h.mux.HandleFunc("GET /adv", h.adv)
	h.mux.HandleFunc("GET /adv/{$}", h.adv)
	h.mux.HandleFunc("GET /adv/{kid}", h.advFor)
	h.mux.HandleFunc("POST /rec/{kid}", h.rec)
	return h
}

// SetKeys makes the handler serve keys from now on, as after a rotation.
func (h *Handler) SetKeys(keys *Keys) { h.keys.Store(keys) }

// SetClientLimit lets each client address make burst exchanges at once
// and rate a second after that, counted afresh from now; a rate of zero
// or less lifts the limit.
func (h *Handler) SetClientLimit(rate float64, burst int) {
	if rate <= 0 {
		h.clients.Store(nil)
		return
	}
	h.clients.Store(newClientLimiter(rate, max(burst, 1)))
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

// NewServer returns an http.Server for h with the package's timeouts and
// header limit, so that a slow or hostile client holds a connection for a
// bounded time.
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

func (h *Handler) adv(w http.ResponseWriter, r *http.Request) {
	reply(w, "application/jose+json", h.keys.Load().Advertisement())
}

func (h *Handler) advFor(w http.ResponseWriter, r *http.Request) {
	adv, err := h.keys.Load().AdvertisementFor(r.PathValue("kid"))
	if err != nil {
		h.refuse(w, r, http.StatusNotFound, "unknown key")
		return
	}
	reply(w, "application/jose+json", adv)
}

func (h *Handler) rec(w http.ResponseWriter, r *http.Request) {
	if l := h.clients.Load(); l != nil && !l.allow(r.RemoteAddr) {
		w.Header().Set("Retry-After", "1")
		h.refuse(w, r, http.StatusTooManyRequests, "too many requests")
		return
	}
	keys := h.keys.Load()
	kid := r.PathValue("kid")
	key := keys.exchanger(kid)
	if key == nil {
		h.refuse(w, r, http.StatusNotFound, "unknown key")
		return
	}
	if !jsonBody(r.Header.Get("Content-Type")) {
		h.refuse(w, r, http.StatusUnsupportedMediaType, "want application/jwk+json")
		return
	}
	body, status := h.readBody(w, r)
	if status != http.StatusOK {
		h.refuse(w, r, status, http.StatusText(status))
		return
	}
	x, err := parsePointJWK(body, key.crv)
	if err != nil {
		h.refuse(w, r, http.StatusBadRequest, "malformed request")
		return
	}
	y, err := keys.Exchange(kid, x)
	if err != nil {
		h.refuse(w, r, http.StatusBadRequest, "malformed request")
		return
	}
	reply(w, "application/jwk+json", publicJWK(key.crv, y, algExchange, opDeriveKey).marshal())
}

// jsonBody reports whether a request's content type is acceptable: none,
// as older clients send, or a JSON type.
func jsonBody(ct string) bool {
	if ct == "" {
		return true
	}
	t, _, err := mime.ParseMediaType(ct)
	return err == nil && (t == "application/jwk+json" || t == "application/json")
}

// readBody reads a request body within MaxRequestBody and BodyTimeout.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, int) {
	timeout := h.BodyTimeout
	if timeout == 0 {
		timeout = DefaultBodyTimeout
	}
	// Servers that cannot set a deadline (ErrNotSupported) still have
	// their own ReadTimeout; NewServer sets one.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(timeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return nil, http.StatusRequestEntityTooLarge
	case err != nil:
		return nil, http.StatusRequestTimeout
	}
	return body, http.StatusOK
}

// parsePointJWK parses the body of POST /rec and of its reply: the public
// JWK of a point on crv, with "alg": "ECMR" or none, and key_ops deriveKey or none. It
// returns the point, uncompressed.
func parsePointJWK(body []byte, crv *curve) ([]byte, error) {
	k, err := parseJWK(body)
	if err != nil {
		return nil, err
	}
	if k.d != nil {
		k.d.Wipe()
		return nil, errors.New("parse request: a private key")
	}
	if k.crv != crv || k.alg != "" && k.alg != algExchange ||
		k.keyOps != nil && (len(k.keyOps) != 1 || k.keyOps[0] != opDeriveKey) {
		return nil, errors.New("parse request: not an ECMR key of the exchange key's curve")
	}
	return k.point(), nil
}

func reply(w http.ResponseWriter, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Write(body)
}

func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	h.log.Debug("tang request refused", "method", r.Method, "path", r.URL.Path,
		"remote", r.RemoteAddr, "status", status)
	w.Header().Set("Connection", "close")
	http.Error(w, msg, status)
}
