// The reference electors scripts/bench/elect.sh measures rigging-sidecar elect against,
// with the same timings and the same question (`GET /leader` → {"leader", "isLeader"}):
//
//   - lease: client-go's leader election (k8s.io/client-go/tools/leaderelection) on a
//     coordination.k8s.io Lease, ReleaseOnCancel on SIGTERM — what Go operators link;
//   - etcd: etcd's own election (go.etcd.io/etcd/client/v3/concurrency) on a session
//     lease with the TTL of the lease duration, resigning and revoking on SIGTERM — the
//     book's etcd election, done with etcd's client.
//
// Built by elect.sh against the control-plane kit's module graph (no download); not part
// of the workspace.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

type view struct {
	mu       sync.Mutex
	leader   string
	isLeader bool
}

func (v *view) set(leader string, isLeader bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.leader, v.isLeader = leader, isLeader
}

func (v *view) serve(w http.ResponseWriter, _ *http.Request) {
	v.mu.Lock()
	defer v.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"leader": v.leader, "isLeader": v.isLeader})
}

func main() {
	backend := flag.String("backend", "lease", "lease or etcd")
	election := flag.String("election", "", "the election's name")
	identity := flag.String("identity", "", "this replica's identity")
	namespace := flag.String("namespace", "default", "lease: the Lease's namespace")
	endpoints := flag.String("etcd-endpoints", "", "etcd: comma-separated client URLs")
	admin := flag.String("admin", "127.0.0.1:0", "where GET /leader is served")
	leaseDuration := flag.Duration("lease-duration", 15*time.Second, "")
	renewDeadline := flag.Duration("renew-deadline", 10*time.Second, "")
	retryPeriod := flag.Duration("retry-period", 2*time.Second, "")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	v := &view{}
	mux := http.NewServeMux()
	mux.HandleFunc("/leader", v.serve)
	go func() { log.Fatal(http.ListenAndServe(*admin, mux)) }()

	switch *backend {
	case "lease":
		config, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
		if err != nil {
			log.Fatal(err)
		}
		client := kubernetes.NewForConfigOrDie(config)
		lock := &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Name: *election, Namespace: *namespace},
			Client:     client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: *identity},
		}
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   *leaseDuration,
			RenewDeadline:   *renewDeadline,
			RetryPeriod:     *retryPeriod,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { v.set(*identity, true) },
				OnStoppedLeading: func() { v.set("", false) },
				OnNewLeader: func(id string) {
					v.set(id, id == *identity)
				},
			},
		})
	case "etcd":
		client, err := clientv3.New(clientv3.Config{
			Endpoints:   strings.Split(*endpoints, ","),
			DialTimeout: *retryPeriod,
		})
		if err != nil {
			log.Fatal(err)
		}
		ttl := int(leaseDuration.Seconds())
		session, err := concurrency.NewSession(client, concurrency.WithTTL(ttl))
		if err != nil {
			log.Fatal(err)
		}
		e := concurrency.NewElection(session, "/reference/"+*election)
		go func() {
			for answer := range e.Observe(ctx) {
				if len(answer.Kvs) > 0 {
					leader := string(answer.Kvs[0].Value)
					v.set(leader, leader == *identity)
				}
			}
		}()
		go func() {
			if err := e.Campaign(ctx, *identity); err == nil {
				v.set(*identity, true)
			}
		}()
		select {
		case <-ctx.Done():
		case <-session.Done():
		}
		v.set("", false)
		resign, cancel := context.WithTimeout(context.Background(), *renewDeadline)
		_ = e.Resign(resign)
		_ = session.Close()
		cancel()
	default:
		log.Fatalf("unknown backend %q", *backend)
	}
}
