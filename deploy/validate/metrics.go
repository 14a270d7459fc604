package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

// metrics are the Prometheus metrics cio-relay exports, as the dashboard and
// the alerts use them. A histogram is queried through its _bucket, _sum and
// _count series.
var metrics = map[string]string{
	"cio_relay_messages_consumed_total":       "counter",
	"cio_relay_calls_delivered_total":         "counter",
	"cio_relay_batches_total":                 "counter",
	"cio_relay_batch_bytes":                   "histogram",
	"cio_relay_batch_calls":                   "histogram",
	"cio_relay_request_duration_seconds":      "histogram",
	"cio_relay_retries_total":                 "counter",
	"cio_relay_dead_letters_total":            "counter",
	"cio_relay_batches_in_flight":             "gauge",
	"cio_relay_acks_failed_total":             "counter",
	"cio_relay_jetstream_errors_total":        "counter",
	"cio_relay_jetstream_timeouts_total":      "counter",
	"cio_relay_jetstream_unavailable_seconds": "gauge",
	"cio_relay_auth_paused":                   "gauge",
	"cio_relay_consumer_pending":              "gauge",
	"cio_relay_consumer_ack_pending":          "gauge",
	"cio_relay_broadcast_pacing_wait_seconds": "histogram",
	"cio_relay_direct_calls_total":            "counter",
}

var (
	metricRef = regexp.MustCompile(`\bcio_relay_[a-zA-Z0-9_]+`)
	keepsLe   = regexp.MustCompile(`by\s*\([^)]*\ble\b`)
)

// checkExpr checks the cio_relay_ series a PromQL expression names.
func (c *checker) checkExpr(where, expr string) {
	if strings.TrimSpace(expr) == "" {
		c.errorf("%s: empty expression", where)
		return
	}
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") || strings.Count(expr, "[") != strings.Count(expr, "]") {
		c.errorf("%s: unbalanced brackets in %q", where, expr)
	}
	for _, name := range metricRef.FindAllString(expr, -1) {
		base, suffix := name, ""
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, s); ok && metrics[b] == "histogram" {
				base, suffix = b, s
			}
		}
		switch typ := metrics[base]; {
		case typ == "":
			c.errorf("%s: unknown metric %s (known: see metrics in deploy/validate/metrics.go)", where, name)
		case typ == "histogram" && suffix == "":
			c.errorf("%s: histogram %s is queried through %s_bucket, _sum or _count", where, name, name)
		case typ == "counter" && !strings.Contains(expr, "rate("+name) && !strings.Contains(expr, "increase("+name):
			c.errorf("%s: counter %s is used without rate() or increase()", where, name)
		case typ == "histogram" && !strings.Contains(expr, "rate("+name):
			c.errorf("%s: histogram series %s is used without rate()", where, name)
		case suffix == "_bucket" && !keepsLe.MatchString(expr):
			c.errorf("%s: %s aggregated without keeping le", where, name)
		}
	}
}

// checkRules checks the expressions of a PrometheusRule.
func (c *checker) checkRules(o *object) {
	r := o.obj.(*monitoringv1.PrometheusRule)
	for _, g := range r.Spec.Groups {
		for _, rule := range g.Rules {
			name := rule.Alert
			if name == "" {
				name = rule.Record
			}
			c.checkExpr(fmt.Sprintf("%s: rule %s", o, name), rule.Expr.String())
		}
	}
}

// checkDashboard checks a Grafana dashboard: JSON, unique panel ids, and
// the metrics every query names.
// It returns the number of queries and the queries themselves, with
// Grafana's variables replaced so that Prometheus can parse them.
func (c *checker) checkDashboard(file string) (int, []string) {
	b, err := os.ReadFile(file)
	if err != nil {
		c.errorf("%v", err)
		return 0, nil
	}
	var d struct {
		Title  string  `json:"title"`
		UID    string  `json:"uid"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		c.errorf("%s: %v", file, err)
		return 0, nil
	}
	if d.Title == "" || d.UID == "" {
		c.errorf("%s: dashboard needs a title and a uid", file)
	}
	ids := map[int]string{}
	queries := 0
	var exprs []string
	grafanaVars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "6h", "$namespace", ".*")
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				c.errorf("%s: panels %q and %q share id %d", file, prev, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
				c.errorf("%s: panel %q: bad gridPos %+v", file, p.Title, p.GridPos)
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				c.errorf("%s: panel %q has no queries", file, p.Title)
			}
			for _, t := range p.Targets {
				queries++
				c.checkExpr(fmt.Sprintf("%s: panel %q query %s", file, p.Title, t.RefID), t.Expr)
				exprs = append(exprs, grafanaVars.Replace(t.Expr))
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return queries, exprs
}

// writeRules writes Prometheus rule files for promtool: one per
// PrometheusRule (its spec is a rule file), and dashboard.rules.yaml with
// every dashboard query as a recording rule, so that promtool parses them.
func writeRules(dir string, objs []*object, queries []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, o := range objs {
		r, ok := o.obj.(*monitoringv1.PrometheusRule)
		if !ok {
			continue
		}
		b, err := yaml.Marshal(r.Spec)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, r.Name+".rules.yaml"), b, 0o644); err != nil {
			return err
		}
	}
	if len(queries) == 0 {
		return nil
	}
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, q := range queries {
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query%d", i+1), Expr: q})
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "dashboard.rules.yaml"), b, 0o644)
}

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}
