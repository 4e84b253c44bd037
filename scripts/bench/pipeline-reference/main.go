// The Go side of scripts/bench/pipeline.sh, written with nats.go's jetstream package. One
// binary, three modes, each printing a one-line JSON summary on stdout at the end:
//
//   - jetstream: the reference. JetStream on its own: async publish of -n messages to a
//     stream of its own (deleted first and last), a pull consumer in the same process
//     consuming and acking them; latency is consume time less the publish time carried
//     in the payload.
//   - source: the head of Rigging's pipeline. Publishes -n messages to -subject of
//     -stream (creating the stream when missing, with the sidecar's defaults), each with a
//     unique Nats-Msg-Id header.
//   - sink: the app behind the last sidecar. Answers every POST with 200 and an empty
//     body, and stops once it has seen every expected message id (or on -timeout, or when
//     nothing new came for -idle).
//
// Every message is the same 1 KiB JSON: {"id":"m123","ts":<unix nanos>,"keep":true,
// "pad":"xxx…"}. With -drop-every K, every K-th message has "keep":false: a filter stage
// on `message.keep` drops it, and the sink expects it not to come.
//
// Not part of the workspace: pipeline.sh builds it with the Go module proxy and caches
// the binary.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

type options struct {
	mode       string
	url        string
	stream     string
	subject    string
	n          int
	size       int
	rate       float64
	prefix     string
	dropEvery  int
	maxPending int
	listen     string
	timeout    time.Duration
	idle       time.Duration
	linger     time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "", "jetstream, source or sink")
	flag.StringVar(&o.url, "nats", nats.DefaultURL, "NATS server URL")
	flag.StringVar(&o.stream, "stream", "", "stream (default: bench for jetstream, rigging for source)")
	flag.StringVar(&o.subject, "subject", "", "subject to publish to (default: STREAM.in)")
	flag.IntVar(&o.n, "n", 100000, "messages")
	flag.IntVar(&o.size, "size", 1024, "bytes of each JSON message")
	flag.Float64Var(&o.rate, "rate", 0, "publish at most this many messages a second (0: as fast as possible)")
	flag.StringVar(&o.prefix, "prefix", "m", "message ids are PREFIX0, PREFIX1, …: a run of its own needs a prefix of its own")
	flag.IntVar(&o.dropEvery, "drop-every", 0, "every K-th message has keep=false (0: none)")
	flag.IntVar(&o.maxPending, "max-pending", 4000, "async publishes awaiting their ack, at most")
	flag.StringVar(&o.listen, "listen", "127.0.0.1:8080", "sink: HTTP address")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	flag.DurationVar(&o.idle, "idle", 30*time.Second, "give up when no new message came for this long")
	flag.DurationVar(&o.linger, "linger", time.Second, "sink: once complete, keep answering this long to count late duplicates")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("pipeline-reference " + o.mode + ": ")
	if o.n <= 0 {
		log.Fatal("-n must be positive")
	}

	var summary map[string]any
	var err error
	switch o.mode {
	case "jetstream":
		if o.stream == "" {
			o.stream = "bench"
		}
		summary, err = reference(o)
	case "source":
		if o.stream == "" {
			o.stream = "rigging"
		}
		summary, err = source(o)
	case "sink":
		summary, err = sink(o)
	default:
		log.Fatalf("-mode %q: want jetstream, source or sink", o.mode)
	}
	if err != nil {
		log.Fatal(err)
	}
	summary["mode"] = o.mode
	summary["cpu_ticks"] = cpuTicks()
	if err := json.NewEncoder(os.Stdout).Encode(summary); err != nil {
		log.Fatal(err)
	}
}

// ---- messages ------------------------------------------------------------------------

type message struct {
	ID string `json:"id"`
	TS int64  `json:"ts"`
}

func (o options) id(i int) string { return o.prefix + strconv.Itoa(i) }

func (o options) keep(i int) bool { return o.dropEvery <= 0 || i%o.dropEvery != o.dropEvery-1 }

// The ids of this run, true for those a filter on `keep` lets through.
func (o options) ids() (ids map[string]bool, kept int) {
	ids = make(map[string]bool, o.n)
	for i := 0; i < o.n; i++ {
		ids[o.id(i)] = o.keep(i)
		if o.keep(i) {
			kept++
		}
	}
	return ids, kept
}

// payload is message i as JSON padded with x to o.size bytes, stamped now.
func (o options) payload(i int, pad string) []byte {
	head := fmt.Sprintf(`{"id":%q,"ts":%d,"keep":%t,"pad":"`, o.id(i), time.Now().UnixNano(), o.keep(i))
	fill := o.size - len(head) - len(`"}`)
	if fill < 0 {
		fill = 0
	}
	b := make([]byte, 0, len(head)+fill+2)
	b = append(b, head...)
	b = append(b, pad[:fill]...)
	return append(b, `"}`...)
}

// pacer spaces calls to wait at 1/rate apart, from the first, catching up when behind.
type pacer struct {
	start time.Time
	rate  float64
}

func (p pacer) wait(i int) {
	if p.rate <= 0 {
		return
	}
	due := p.start.Add(time.Duration(float64(i) / p.rate * float64(time.Second)))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
}

// publish sends o.n messages asynchronously to o.subject, each with its Nats-Msg-Id, and
// waits for every ack; failed acks go to the error handler of js.
func publish(ctx context.Context, js jetstream.JetStream, o options) error {
	pad := strings.Repeat("x", o.size)
	p := pacer{start: time.Now(), rate: o.rate}
	for i := 0; i < o.n; i++ {
		p.wait(i)
		data := o.payload(i, pad)
		for {
			_, err := js.PublishAsync(o.subject, data, jetstream.WithMsgID(o.id(i)))
			if err == nil {
				break
			}
			// The window of unacknowledged publishes is full for longer than the stall
			// wait: wait again.
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				continue
			}
			return fmt.Errorf("publish %s: %w", o.id(i), err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("acks of the publishes: %w (%d still pending)", ctx.Err(), js.PublishAsyncPending())
	}
}

type countingHandler struct {
	mu     sync.Mutex
	failed int
	first  error
}

// result: how many publishes failed, and the first error.
func (c *countingHandler) result() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed, c.first
}

func (c *countingHandler) handle(_ jetstream.JetStream, _ *nats.Msg, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed++
	if c.first == nil {
		c.first = err
	}
}

func connect(o options, failed *countingHandler) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(o.url, nats.Name("pipeline-reference "+o.mode))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(o.maxPending),
		jetstream.WithPublishAsyncErrHandler(failed.handle))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// ---- tally: what arrived, by body id ---------------------------------------------------

type tally struct {
	mu         sync.Mutex
	ids        map[string]bool // every id of the run: true when it is to arrive
	expected   int
	seen       map[string]bool
	remaining  int
	deliveries int
	duplicates int
	leaked     int // filtered ids that arrived all the same
	strays     int // ids of no message of this run
	bad        int // bodies that are not such JSON
	firstTS    int64
	lastNew    time.Time
	latencies  []int64
	done       chan struct{}
}

func newTally(o options) *tally {
	ids, kept := o.ids()
	return &tally{ids: ids, expected: kept, seen: make(map[string]bool, kept), remaining: kept,
		latencies: make([]int64, 0, kept), done: make(chan struct{}), firstTS: math.MaxInt64,
		lastNew: time.Now()}
}

// record counts one delivery of body at time now.
func (t *tally) record(body []byte, now time.Time) {
	var m message
	err := json.Unmarshal(body, &m)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.deliveries++
	keep, ours := t.ids[m.ID]
	switch {
	case err != nil || m.ID == "":
		t.bad++
	case t.seen[m.ID]:
		t.duplicates++
	case !ours:
		t.strays++
		t.seen[m.ID] = true
	case !keep:
		t.leaked++
		t.seen[m.ID] = true
	default:
		t.seen[m.ID] = true
		t.latencies = append(t.latencies, now.UnixNano()-m.TS)
		if m.TS < t.firstTS {
			t.firstTS = m.TS
		}
		t.lastNew = now
		t.remaining--
		if t.remaining == 0 {
			close(t.done)
		}
	}
}

// wait returns once every expected id came, on timeout, or after idle without a new one
// (from the start, before the first).
func (t *tally) wait(timeout, idle time.Duration) string {
	deadline := time.After(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			return "complete"
		case <-deadline:
			return "timeout"
		case <-tick.C:
			t.mu.Lock()
			last := t.lastNew
			t.mu.Unlock()
			if time.Since(last) > idle {
				return "idle"
			}
		}
	}
}

// summary: n messages went in; the rate is n over the time from the first publish to the
// last new arrival.
func (t *tally) summary(n int, end string) map[string]any {
	t.mu.Lock()
	defer t.mu.Unlock()
	lat := append([]int64(nil), t.latencies...)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	missing := make([]string, 0, 5)
	for id, keep := range t.ids {
		if keep && !t.seen[id] && len(missing) < 5 {
			missing = append(missing, id)
		}
	}
	sort.Strings(missing)
	s := map[string]any{
		"end": end, "messages": n, "expected": t.expected, "received": t.expected - t.remaining,
		"missing": t.remaining, "missing_sample": missing, "deliveries": t.deliveries,
		"duplicates": t.duplicates, "leaked": t.leaked, "strays": t.strays, "bad": t.bad,
		"p50_ms": percentile(lat, 0.50), "p90_ms": percentile(lat, 0.90), "p99_ms": percentile(lat, 0.99),
		"p999_ms": percentile(lat, 0.999), "max_ms": percentile(lat, 1),
		"seconds": 0.0, "rate": 0.0,
	}
	if len(lat) > 0 {
		span := float64(t.lastNew.UnixNano()-t.firstTS) / 1e9
		s["seconds"] = span
		if span > 0 {
			s["rate"] = float64(n) / span
		}
	}
	return s
}

// percentile: nearest rank, in milliseconds.
func percentile(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return float64(sorted[i]) / 1e6
}

// ---- modes -----------------------------------------------------------------------------

func reference(o options) (map[string]any, error) {
	if o.subject == "" {
		o.subject = o.stream + ".in"
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	failed := &countingHandler{}
	nc, js, err := connect(o, failed)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if err := js.DeleteStream(ctx, o.stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, err
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: o.stream, Subjects: []string{o.stream + ".>"}, Storage: jetstream.FileStorage,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = js.DeleteStream(context.Background(), o.stream) }()
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "bench", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: o.subject,
	})
	if err != nil {
		return nil, err
	}
	t := newTally(o)
	var ackErrors atomic.Int64
	cc, err := cons.Consume(func(m jetstream.Msg) {
		t.record(m.Data(), time.Now())
		if m.Ack() != nil {
			ackErrors.Add(1)
		}
	})
	if err != nil {
		return nil, err
	}
	defer cc.Stop()
	if err := publish(ctx, js, o); err != nil {
		return nil, err
	}
	end := t.wait(o.timeout, o.idle)
	cc.Stop()
	s := t.summary(o.n, end)
	n, first := failed.result()
	s["publish_errors"], s["ack_errors"] = n, ackErrors.Load()
	if first != nil {
		log.Printf("%d publishes failed, the first: %v", n, first)
	}
	return s, nil
}

func source(o options) (map[string]any, error) {
	if o.subject == "" {
		o.subject = o.stream + ".in"
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	failed := &countingHandler{}
	nc, js, err := connect(o, failed)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	// The sidecars create the stream when missing; this does the same when it is first,
	// with their defaults (24h retention, 2m duplicate window).
	if _, err := js.Stream(ctx, o.stream); errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name: o.stream, Subjects: []string{o.stream + ".>"}, Storage: jetstream.FileStorage,
			Duplicates: 2 * time.Minute, MaxAge: 24 * time.Hour,
		})
		if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := publish(ctx, js, o); err != nil {
		return nil, err
	}
	secs := time.Since(start).Seconds()
	n, first := failed.result()
	if first != nil {
		log.Printf("%d publishes failed, the first: %v", n, first)
	}
	return map[string]any{"published": o.n, "publish_errors": n, "seconds": secs,
		"rate": float64(o.n) / secs, "start_ns": start.UnixNano()}, nil
}

func sink(o options) (map[string]any, error) {
	t := newTally(o)
	// The sidecar's own message ids: a body id delivered twice under one of them is a
	// redelivery, under two of them a message published twice.
	var mu sync.Mutex
	headerIDs := make(map[string]bool, o.n)
	noHeader, readErrors := 0, 0
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		now := time.Now()
		id := r.Header.Get("Rigging-Message-Id")
		mu.Lock()
		switch {
		case err != nil:
			readErrors++
		case id == "":
			noHeader++
		default:
			headerIDs[id] = true
		}
		mu.Unlock()
		if err == nil {
			t.record(body, now)
		}
		w.WriteHeader(http.StatusOK)
	})
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	end := t.wait(o.timeout, o.idle)
	if end == "complete" {
		time.Sleep(o.linger)
	}
	_ = srv.Close()
	s := t.summary(o.n, end)
	mu.Lock()
	s["header_ids"], s["no_header"], s["read_errors"] = len(headerIDs), noHeader, readErrors
	mu.Unlock()
	return s, nil
}

// cpuTicks: this process's user+system time in clock ticks, fields 14 and 15 of
// /proc/self/stat, as lib.sh's cpu_ticks reads them for the other processes.
func cpuTicks() int64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return -1
	}
	// Fields after the command name, which is in parentheses and may hold spaces: field 3
	// is the first of them.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return -1
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}
