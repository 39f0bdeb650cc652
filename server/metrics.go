package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sooserve/sooserve/engine/sched"
)

// Metrics are the server's Prometheus metrics, registered on the server's
// own registry (never the global default one).
type Metrics struct {
	Registry   *prometheus.Registry
	requests   *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	ttft       *prometheus.HistogramVec
	itl        *prometheus.HistogramVec
	tokens     *prometheus.CounterVec
	occupancy  *prometheus.HistogramVec
	running    *prometheus.GaugeVec
	queue      *prometheus.GaugeVec
	stepTime   *prometheus.HistogramVec
	stepTokens *prometheus.HistogramVec
}

// NewMetrics registers the server's metrics on reg (a new registry when nil).
func NewMetrics(reg *prometheus.Registry) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	lat := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
	m := &Metrics{
		Registry: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "soo_http_requests_total", Help: "HTTP requests by route, model and status code."}, []string{"route", "model", "code"}),
		latency:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "soo_http_request_duration_seconds", Help: "HTTP request latency (to the last byte of streamed responses) by route and model.", Buckets: lat}, []string{"route", "model"}),
		ttft:     prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "soo_time_to_first_token_seconds", Help: "Time from request arrival to the first generated token.", Buckets: lat}, []string{"route", "model"}),
		itl:      prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "soo_inter_token_latency_seconds", Help: "Time between consecutive generated tokens of a choice.", Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}}, []string{"model"}),
		tokens:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "soo_tokens_total", Help: "Tokens in (prompt) and out (completion) by model.", ConstLabels: nil}, []string{"model", "direction"}),
		occupancy: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "soo_batch_occupancy", Help: "Running sequences per forward step.",
			Buckets: []float64{1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64}}, []string{"model"}),
		running:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "soo_batch_running", Help: "Sequences in the running batch (0 when idle)."}, []string{"model"}),
		queue:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "soo_queue_depth", Help: "Requests waiting for a batch slot."}, []string{"model"}),
		stepTime:   prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "soo_step_duration_seconds", Help: "Duration of one forward step.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"model"}),
		stepTokens: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "soo_step_tokens", Help: "Tokens (prefill and decode) per forward step.", Buckets: prometheus.ExponentialBuckets(1, 2, 12)}, []string{"model"}),
	}
	reg.MustRegister(m.requests, m.latency, m.ttft, m.itl, m.tokens, m.occupancy, m.running, m.queue, m.stepTime, m.stepTokens)
	return m
}

// Observer returns a scheduler observer that records the steps and queue of
// the base model id.
func (m *Metrics) Observer(model string) sched.Observer {
	return &schedObserver{m: m, model: model}
}

type schedObserver struct {
	m     *Metrics
	model string
}

func (o *schedObserver) Step(running, tokens int, d time.Duration) {
	o.m.occupancy.WithLabelValues(o.model).Observe(float64(running))
	o.m.stepTime.WithLabelValues(o.model).Observe(d.Seconds())
	o.m.stepTokens.WithLabelValues(o.model).Observe(float64(tokens))
}

func (o *schedObserver) Running(n int) {
	o.m.running.WithLabelValues(o.model).Set(float64(n))
}

func (o *schedObserver) Queue(waiting int) {
	o.m.queue.WithLabelValues(o.model).Set(float64(waiting))
}

// usage records a finished generation's token counts.
func (m *Metrics) usage(model string, u sched.Usage) {
	m.tokens.WithLabelValues(model, "in").Add(float64(u.PromptTokens))
	m.tokens.WithLabelValues(model, "out").Add(float64(u.CompletionTokens))
}
