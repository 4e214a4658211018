package keyserver

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus metrics.
type metrics struct {
	gatherer prometheus.Gatherer
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// newMetrics registers the metrics on reg (a registry of their own when
// nil); inFlight and open count the requests being handled and the
// connections open.
func newMetrics(reg prometheus.Registerer, inFlight *atomic.Int64, open func() int) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pbnd_requests_total",
			Help: "Requests to the TLS API by route and HTTP status.",
		}, []string{"route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pbnd_request_duration_seconds",
			Help:    "Time to answer a request of the TLS API, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"route"}),
	}
	if reg == nil {
		r := prometheus.NewRegistry()
		m.gatherer, reg = r, r
	}
	busy := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pbnd_requests_in_flight",
		Help: "Requests of the TLS API being handled.",
	}, func() float64 { return float64(inFlight.Load()) })
	conns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pbnd_connections_open",
		Help: "Connections open to the TLS API; at the configured maximum, new ones wait.",
	}, func() float64 { return float64(open()) })
	for _, c := range []prometheus.Collector{m.requests, m.duration, busy, conns} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observe(route string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(route).Observe(d.Seconds())
}
