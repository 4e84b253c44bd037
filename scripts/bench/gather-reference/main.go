// The Go side of scripts/bench/gather.sh, on the standard library alone. One binary, three
// modes:
//
//   - leaf: an HTTP server that answers every request after -sleep (1ms) with a small
//     JSON document, {"hits":[{"doc":"s3-r1-42","score":42}]}; with probability -stall
//     (0.01) it waits -stall-for (100ms) instead, and says so in the header
//     X-Leaf-Stalled: 1. GET /count answers {"served":…,"stalled":…,"cancelled":…}: the
//     requests it has taken (not counting /count), those it stalled, and those whose
//     client went away before the answer (a cancelled hedge or a timeout).
//   - load: the load driver. Sends GET -url at -rate requests a second (open loop: a
//     request does not wait for the one before; -rate 0 with -c N: N clients in a closed
//     loop) for -warmup, then -duration, and records the latency of every request sent
//     after the warm-up. With -shards N an answer counts as whole when it is a 200 with
//     Rigging-Coverage: N/N and N "doc" fields in its body.
//   - fanout: the reference fan-out. The same driver, but each request is a plain
//     parallel fan-out from this process to one replica (round robin) of every shard of
//     -leaves, under one -timeout, waiting for every answer, whose "hits" arrays it then
//     concatenates into one JSON document as the root does. No hedging, no retry. The CPU
//     this process uses (getrusage) over the requests sent is the reference's CPU per
//     fan-out; it also reports the leaf requests' own latency, stalled or not.
//
// load and fanout print a one-line JSON summary on stdout at the end; with -out FILE they
// also write every recorded latency (ns, one a line), for percentiles over several runs.
// Percentiles are exact, by nearest rank over the sorted samples.
//
// Not part of the workspace: gather.sh builds it (no dependency to download) and caches
// the binary outside the repository.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	mode     string
	listen   string
	shard    int
	replica  int
	sleep    time.Duration
	stall    float64
	stallFor time.Duration

	url      string
	leaves   string
	shards   int
	rate     float64
	clients  int
	warmup   time.Duration
	duration time.Duration
	timeout  time.Duration
	out      string
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "", "leaf, load or fanout")
	flag.StringVar(&o.listen, "listen", "127.0.0.1:8080", "leaf: HTTP address")
	flag.IntVar(&o.shard, "shard", 0, "leaf: its shard, for the doc ids")
	flag.IntVar(&o.replica, "replica", 0, "leaf: its replica, for the doc ids")
	flag.DurationVar(&o.sleep, "sleep", time.Millisecond, "leaf: how long an answer takes")
	flag.Float64Var(&o.stall, "stall", 0.01, "leaf: probability that an answer stalls")
	flag.DurationVar(&o.stallFor, "stall-for", 100*time.Millisecond, "leaf: how long a stalled answer takes")
	flag.StringVar(&o.url, "url", "", "load: the URL to send GET requests to")
	flag.StringVar(&o.leaves, "leaves", "", "fanout: the shards, space-separated, each a comma-separated list of HOST:PORT replicas")
	flag.IntVar(&o.shards, "shards", 0, "load: expect Rigging-Coverage N/N and N docs in every answer (0: only a 200)")
	flag.Float64Var(&o.rate, "rate", 1000, "load, fanout: requests a second, open loop (0: closed loop with -c clients)")
	flag.IntVar(&o.clients, "c", 4, "load, fanout: clients of the closed loop (with -rate 0)")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "load, fanout: requests sent before recording starts")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "load, fanout: how long to record")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Second, "load: per request; fanout: per fan-out")
	flag.StringVar(&o.out, "out", "", "load, fanout: write every recorded latency (ns, one a line) to this file")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix(o.mode + ": ")

	switch o.mode {
	case "leaf":
		leaf(o)
	case "load", "fanout":
		drive(o)
	default:
		log.Fatalf("-mode: give leaf, load or fanout, not %q", o.mode)
	}
}

// ---- leaf -------------------------------------------------------------------------------

func leaf(o options) {
	var served, stalled, cancelled atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/count", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"served":%d,"stalled":%d,"cancelled":%d}`+"\n",
			served.Load(), stalled.Load(), cancelled.Load())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n := served.Add(1)
		wait, stall := o.sleep, rand.Float64() < o.stall
		if stall {
			wait = o.stallFor
			stalled.Add(1)
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			cancelled.Add(1)
			return
		}
		body := fmt.Appendf(nil, `{"hits":[{"doc":"s%d-r%d-%d","score":%d}]}`, o.shard, o.replica, n, n%1000)
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		if stall {
			h.Set("X-Leaf-Stalled", "1")
		}
		_, _ = w.Write(body)
	})
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		log.Fatal(err)
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 10 * time.Minute}
	log.Fatal(server.Serve(ln))
}

// ---- the driver ---------------------------------------------------------------------------

// outcome is what one request (load) or one fan-out (fanout) came to.
type outcome int

const (
	whole   outcome = iota // a 200 with everything in it
	partial                // load: a 200 with less coverage; fanout: a leaf failed
	non200                 // load: another status
	failed                 // a transport error or the timeout
	bad                    // load: the coverage header says N/N but the body has not N docs
)

var outcomeNames = []string{"whole", "partial", "non200", "failed", "bad"}

// leafSample is one leaf request of the reference fan-out.
type leafSample struct {
	ns      int64
	stalled bool
	ok      bool
}

type recorder struct {
	mu       sync.Mutex
	lat      []int64
	outcomes [5]int64
	leaves   []leafSample
	sent     atomic.Int64
}

func (r *recorder) add(ns int64, o outcome, leaves []leafSample) {
	r.mu.Lock()
	r.lat = append(r.lat, ns)
	r.outcomes[o]++
	r.leaves = append(r.leaves, leaves...)
	r.mu.Unlock()
}

// cpuNanos is the CPU time this process has used: user and system.
func cpuNanos() (int64, int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		log.Fatal(err)
	}
	return ru.Utime.Nano(), ru.Stime.Nano()
}

// runQueueNanos is the time this process's threads have spent runnable but waiting for a
// CPU (the second field of /proc/self/task/*/schedstat); 0 where there is no such file.
func runQueueNanos() int64 {
	paths, _ := filepath.Glob("/proc/self/task/*/schedstat")
	var total int64
	for _, path := range paths {
		text, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		if fields := strings.Fields(string(text)); len(fields) >= 2 {
			v, _ := strconv.ParseInt(fields[1], 10, 64)
			total += v
		}
	}
	return total
}

func drive(o options) {
	transport := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        0, // no limit
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     10 * time.Minute,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: transport}

	var one func(record bool) (outcome, []leafSample)
	switch o.mode {
	case "load":
		if o.url == "" {
			log.Fatal("-url is required")
		}
		one = loadRequest(o, client)
	case "fanout":
		shards := parseLeaves(o.leaves)
		if len(shards) == 0 {
			log.Fatal("-leaves is required")
		}
		one = fanoutRequest(o, client, shards)
	}

	var rec recorder
	run := func(record bool) {
		rec.sent.Add(1)
		t := time.Now()
		res, leaves := one(record)
		ns := time.Since(t).Nanoseconds()
		if record {
			rec.add(ns, res, leaves)
		}
	}

	user0, sys0 := cpuNanos()
	waited0 := runQueueNanos()
	start := time.Now()
	from := start.Add(o.warmup)
	end := from.Add(o.duration)
	var wg sync.WaitGroup
	var maxLag, sumLag time.Duration
	var paced int64
	if o.rate > 0 {
		// Open loop: request i is due at start + i/rate, sent by a goroutine of its own.
		for i := 0; ; i++ {
			due := start.Add(time.Duration(float64(i) * float64(time.Second) / o.rate))
			if !due.Before(end) {
				break
			}
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			lag := time.Since(due)
			maxLag = max(maxLag, lag)
			sumLag += lag
			paced++
			record := !due.Before(from)
			wg.Add(1)
			go func() {
				defer wg.Done()
				run(record)
			}()
		}
	} else {
		for range o.clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					now := time.Now()
					if !now.Before(end) {
						return
					}
					run(!now.Before(from))
				}
			}()
		}
	}
	wg.Wait()
	user1, sys1 := cpuNanos()
	waited := runQueueNanos() - waited0
	user, cpu := user1-user0, user1-user0+sys1-sys0
	transport.CloseIdleConnections()

	if o.out != "" {
		writeLatencies(o.out, rec.lat)
	}
	sent := rec.sent.Load()
	s := map[string]any{
		"mode":          o.mode,
		"rate_asked":    o.rate,
		"clients":       o.clients,
		"sent":          sent,
		"recorded":      len(rec.lat),
		"rate":          float64(len(rec.lat)) / o.duration.Seconds(),
		"cpu_us_per":    float64(cpu) / 1e3 / math.Max(1, float64(sent)),
		"user_us_per":   float64(user) / 1e3 / math.Max(1, float64(sent)),
		"runq_wait_ms":  float64(waited) / 1e6,
		"cpu_ms":        float64(cpu) / 1e6,
		"wall_s":        time.Since(start).Seconds(),
		"max_lag_ms":    ms(maxLag.Nanoseconds()),
		"mean_lag_ms":   ms(sumLag.Nanoseconds() / max(1, paced)),
		"latency_files": o.out,
	}
	for i, name := range outcomeNames {
		s[name] = rec.outcomes[i]
	}
	for k, v := range percentiles(rec.lat) {
		s[k] = v
	}
	if o.mode == "fanout" {
		var unstalled, all []int64
		var stalled, leafFailed int64
		for _, l := range rec.leaves {
			if !l.ok {
				leafFailed++
				continue
			}
			all = append(all, l.ns)
			if l.stalled {
				stalled++
			} else {
				unstalled = append(unstalled, l.ns)
			}
		}
		s["leaf_requests"] = len(rec.leaves)
		s["leaf_failed"] = leafFailed
		s["leaf_stalled"] = stalled
		for k, v := range percentiles(unstalled) {
			s["leaf_unstalled_"+k] = v
		}
		for k, v := range percentiles(all) {
			s["leaf_all_"+k] = v
		}
	}
	line, err := json.Marshal(s)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(line))
}

func loadRequest(o options, client *http.Client) func(bool) (outcome, []leafSample) {
	want := fmt.Sprintf("%d/%d", o.shards, o.shards)
	doc := []byte(`"doc"`)
	return func(bool) (outcome, []leafSample) {
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.url, nil)
		if err != nil {
			log.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return failed, nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			return failed, nil
		case resp.StatusCode != http.StatusOK:
			return non200, nil
		case o.shards == 0:
			return whole, nil
		case resp.Header.Get("Rigging-Coverage") != want:
			return partial, nil
		case bytes.Count(body, doc) != o.shards:
			return bad, nil
		}
		return whole, nil
	}
}

func parseLeaves(text string) [][]string {
	var shards [][]string
	for _, s := range strings.Fields(text) {
		shards = append(shards, strings.Split(s, ","))
	}
	return shards
}

// leafErrors counts the failed leaf requests, to log the first few.
var leafErrors atomic.Int64

// answer is what the reference reads of a leaf's answer, and merged what it makes of them.
type answer struct {
	Hits []json.RawMessage `json:"hits"`
}

type merged struct {
	Hits     []json.RawMessage `json:"hits"`
	Coverage struct {
		Answered int   `json:"answered"`
		Total    int   `json:"total"`
		Missing  []int `json:"missing,omitempty"`
	} `json:"coverage"`
}

func fanoutRequest(o options, client *http.Client, shards [][]string) func(bool) (outcome, []leafSample) {
	next := make([]atomic.Uint64, len(shards))
	return func(record bool) (outcome, []leafSample) {
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		defer cancel()
		answers := make([]*answer, len(shards))
		samples := make([]leafSample, len(shards))
		var wg sync.WaitGroup
		for i, replicas := range shards {
			addr := replicas[(next[i].Add(1)-1)%uint64(len(replicas))]
			wg.Add(1)
			go func() {
				defer wg.Done()
				t := time.Now()
				a, stalled, err := get(ctx, client, "http://"+addr+"/search")
				samples[i] = leafSample{ns: time.Since(t).Nanoseconds(), stalled: stalled, ok: err == nil}
				if err != nil && leafErrors.Add(1) <= 5 {
					log.Printf("%s: %v", addr, err)
				}
				answers[i] = a
			}()
		}
		wg.Wait()
		var m merged
		m.Coverage.Total = len(shards)
		for i, a := range answers {
			if a == nil {
				m.Coverage.Missing = append(m.Coverage.Missing, i)
				continue
			}
			m.Coverage.Answered++
			m.Hits = append(m.Hits, a.Hits...)
		}
		if _, err := json.Marshal(&m); err != nil {
			log.Fatal(err)
		}
		if !record {
			samples = nil
		}
		if m.Coverage.Answered < len(shards) {
			return partial, samples
		}
		return whole, samples
	}
}

func get(ctx context.Context, client *http.Client, url string) (*answer, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, false, err
	}
	stalled := resp.Header.Get("X-Leaf-Stalled") != ""
	if resp.StatusCode != http.StatusOK {
		return nil, stalled, fmt.Errorf("status %d", resp.StatusCode)
	}
	var a answer
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, stalled, err
	}
	return &a, stalled, nil
}

// ---- latencies ----------------------------------------------------------------------------

func ms(ns int64) float64 { return math.Round(float64(ns)/1e3) / 1e3 }

// percentiles of the samples (ns), in ms, by nearest rank.
func percentiles(samples []int64) map[string]any {
	if len(samples) == 0 {
		return map[string]any{"n": 0}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return ms(s[min(max(i, 0), len(s)-1)])
	}
	var sum int64
	for _, v := range s {
		sum += v
	}
	return map[string]any{
		"n":       len(s),
		"p50_ms":  rank(50),
		"p90_ms":  rank(90),
		"p99_ms":  rank(99),
		"p999_ms": rank(99.9),
		"max_ms":  ms(s[len(s)-1]),
		"mean_ms": ms(sum / int64(len(s))),
	}
}

func writeLatencies(path string, lat []int64) {
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	w := bufio.NewWriter(f)
	var buf []byte
	for _, v := range lat {
		buf = strconv.AppendInt(buf[:0], v, 10)
		buf = append(buf, '\n')
		_, _ = w.Write(buf)
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		log.Fatal(err)
	}
}
