// Command coredns is CoreDNS built with only the plugins the kit's cluster DNS uses.
//
// The stock build links every plugin, cloud providers' SDKs included; the kit needs
// Kubernetes service discovery and the probes, and must never forward a query off the
// machine, so the forwarding plugins are not even compiled in.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The order in which a query passes the plugins, as in CoreDNS's plugin.cfg.
	dnsserver.Directives = []string{"ready", "health", "errors", "cache", "kubernetes"}
}

func main() {
	coremain.Run()
}
