// Command validate checks cio-relay's rendered Kubernetes manifests offline.
//
// It is not kubeconform: kubeconform needs JSON schemas that it downloads
// from GitHub, which CI cannot reach. Instead every object is decoded the way
// the API server's strict field validation decodes it (case-sensitive field
// names, unknown and duplicate fields are errors) into the Go types the API
// server itself uses: k8s.io/api for built-in kinds, the Prometheus
// Operator's API module for ServiceMonitor and PrometheusRule. KEDA's
// ScaledObject has no light Go API module, so only its nats-jetstream trigger
// is checked, against the parameters KEDA documents.
//
// Then the objects are checked against each other and against the rules
// this deployment relies on: selectors that select, named ports that exist,
// secret files that are mounted and present, a grace period longer than the
// worker's shutdown timeout, the restricted security settings. See checks
// below; each message names the object.
//
// Usage:
//
//	validate [-allow-missing-secrets] [-write-rules DIR] FILE... (- for standard input)
//
// A FILE ending in .json is a Grafana dashboard: its queries, and the
// alerts' expressions, may name only the metrics listed in metrics.go.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// object is one decoded manifest.
type object struct {
	source string // file and document number, for messages
	kind   string // group/version/kind
	name   string
	ns     string
	obj    any // pointer to the typed object, or map for ScaledObject
}

func (o *object) String() string {
	k := o.kind[strings.LastIndex(o.kind, "/")+1:]
	return fmt.Sprintf("%s %s (%s)", k, o.name, o.source)
}

// types maps apiVersion/kind to a new typed object.
var types = map[string]func() any{
	"v1/Namespace":                  func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":             func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":                  func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                     func() any { return &corev1.Secret{} },
	"v1/Service":                    func() any { return &corev1.Service{} },
	"apps/v1/Deployment":            func() any { return &appsv1.Deployment{} },
	"batch/v1/CronJob":              func() any { return &batchv1.CronJob{} },
	"batch/v1/Job":                  func() any { return &batchv1.Job{} },
	"policy/v1/PodDisruptionBudget": func() any { return &policyv1.PodDisruptionBudget{} },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return &monitoringv1.ServiceMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return &monitoringv1.PrometheusRule{} },
	"keda.sh/v1alpha1/ScaledObject":           func() any { return &map[string]any{} },
}

// checker collects problems.
type checker struct {
	errs []string
}

func (c *checker) errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

func main() {
	allowMissingSecrets := flag.Bool("allow-missing-secrets", false,
		"do not require the Secrets that pods mount to be among the inputs (the base has none)")
	rulesOut := flag.String("write-rules", "",
		"write the PrometheusRules' groups, and the dashboards' queries as recording rules, as Prometheus rule files into this directory (for promtool)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: validate [-allow-missing-secrets] [-write-rules DIR] FILE... (- for standard input)")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	var c checker
	var objs []*object
	var dashboards []string
	var queries []string
	for _, f := range flag.Args() {
		if strings.HasSuffix(f, ".json") {
			n, q := c.checkDashboard(f)
			queries = append(queries, q...)
			dashboards = append(dashboards, fmt.Sprintf("%s (%d queries)", f, n))
			continue
		}
		objs = append(objs, c.decodeFile(f)...)
	}
	if len(objs) == 0 && len(dashboards) == 0 {
		c.errorf("no objects in %s", strings.Join(flag.Args(), ", "))
	}
	c.crossCheck(objs, *allowMissingSecrets)
	if *rulesOut != "" {
		if err := writeRules(*rulesOut, objs, queries); err != nil {
			c.errorf("-write-rules: %v", err)
		}
	}

	counts := map[string]int{}
	for _, o := range objs {
		counts[o.kind[strings.LastIndex(o.kind, "/")+1:]]++
	}
	var summary []string
	for k, n := range counts {
		summary = append(summary, fmt.Sprintf("%d %s", n, k))
	}
	sort.Strings(summary)
	if len(c.errs) > 0 {
		for _, e := range c.errs {
			fmt.Fprintln(os.Stderr, "ERROR:", e)
		}
		fmt.Fprintf(os.Stderr, "%d problem(s) in %s\n", len(c.errs), strings.Join(flag.Args(), " "))
		os.Exit(1)
	}
	if len(objs) > 0 {
		fmt.Printf("ok: %d objects (%s)\n", len(objs), strings.Join(summary, ", "))
	}
	for _, d := range dashboards {
		fmt.Printf("ok: dashboard %s\n", d)
	}
}

// decodeFile strictly decodes every YAML document of a file.
func (c *checker) decodeFile(name string) []*object {
	var r io.Reader
	if name == "-" {
		r = os.Stdin
	} else {
		f, err := os.Open(name)
		if err != nil {
			c.errorf("%v", err)
			return nil
		}
		defer f.Close()
		r = f
	}
	var objs []*object
	yr := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for i := 1; ; i++ {
		doc, err := yr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			c.errorf("%s: reading document %d: %v", name, i, err)
			break
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		if o := c.decode(fmt.Sprintf("%s#%d", name, i), doc); o != nil {
			objs = append(objs, o)
		}
	}
	return objs
}

// stripComments drops whole-line YAML comments, to tell an empty document.
func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

// decode checks one document against the Go type of its kind, as the API
// server's strict field validation does.
func (c *checker) decode(source string, doc []byte) *object {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		c.errorf("%s: %v", source, err)
		return nil
	}
	var tm metav1.TypeMeta
	var meta struct {
		Metadata struct {
			Name         string `json:"name"`
			GenerateName string `json:"generateName"`
			Namespace    string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &tm); err != nil {
		c.errorf("%s: %v", source, err)
		return nil
	}
	_ = kjson.UnmarshalCaseSensitivePreserveInts(js, &meta)
	gvk := tm.APIVersion + "/" + tm.Kind
	newObj, ok := types[gvk]
	if !ok {
		c.errorf("%s: apiVersion %q kind %q is not one this check knows; add it to types in deploy/validate", source, tm.APIVersion, tm.Kind)
		return nil
	}
	o := &object{source: source, kind: gvk, name: meta.Metadata.Name, ns: meta.Metadata.Namespace, obj: newObj()}
	strictErrs, err := kjson.UnmarshalStrict(js, o.obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		c.errorf("%s: %v", o, err)
		return nil
	}
	for _, e := range strictErrs {
		c.errorf("%s: %v", o, e)
	}
	switch {
	case o.name != "":
		if msgs := validation.IsDNS1123Subdomain(o.name); len(msgs) > 0 {
			c.errorf("%s: metadata.name: %s", o, strings.Join(msgs, "; "))
		}
	case meta.Metadata.GenerateName != "":
		// For `kubectl create`: the server appends 5 characters.
		o.name = meta.Metadata.GenerateName
		if msgs := validation.IsDNS1123Subdomain(o.name + "xxxxx"); len(msgs) > 0 {
			c.errorf("%s: metadata.generateName: %s", o, strings.Join(msgs, "; "))
		}
	default:
		c.errorf("%s: metadata.name is empty", o)
	}
	if m, ok := o.obj.(interface{ GetLabels() map[string]string }); ok {
		c.checkLabels(o, "metadata.labels", m.GetLabels())
	}
	return o
}

func (c *checker) checkLabels(o *object, where string, ls map[string]string) {
	for k, v := range ls {
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			c.errorf("%s: %s key %q: %s", o, where, k, strings.Join(msgs, "; "))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			c.errorf("%s: %s[%s] %q: %s", o, where, k, v, strings.Join(msgs, "; "))
		}
	}
}

// workload is a pod template with the object that holds it.
type workload struct {
	o    *object
	spec *corev1.PodTemplateSpec
}

// crossCheck checks the objects against each other.
func (c *checker) crossCheck(objs []*object, allowMissingSecrets bool) {
	configMaps := map[string]*corev1.ConfigMap{}
	secrets := map[string]*corev1.Secret{}
	var deployments []*object
	var workloads []workload
	var services, pdbs, monitors, scaled []*object
	namespaces := map[string]bool{}
	namespaced := 0
	for _, o := range objs {
		if o.kind != "v1/Namespace" {
			namespaced++
			namespaces[o.ns] = true
		}
		switch x := o.obj.(type) {
		case *corev1.ConfigMap:
			configMaps[x.Name] = x
		case *corev1.Secret:
			secrets[x.Name] = x
		case *appsv1.Deployment:
			deployments = append(deployments, o)
			workloads = append(workloads, workload{o, &x.Spec.Template})
		case *batchv1.CronJob:
			workloads = append(workloads, workload{o, &x.Spec.JobTemplate.Spec.Template})
		case *batchv1.Job:
			workloads = append(workloads, workload{o, &x.Spec.Template})
		case *corev1.Service:
			services = append(services, o)
		case *policyv1.PodDisruptionBudget:
			pdbs = append(pdbs, o)
		case *monitoringv1.ServiceMonitor:
			monitors = append(monitors, o)
		case *map[string]any:
			scaled = append(scaled, o)
		case *monitoringv1.PrometheusRule:
			c.checkRules(o)
		}
	}
	if len(namespaces) > 1 {
		var ns []string
		for n := range namespaces {
			ns = append(ns, strconv.Quote(n))
		}
		sort.Strings(ns)
		c.errorf("the %d namespaced objects are in different namespaces: %s", namespaced, strings.Join(ns, ", "))
	}

	images := map[string][]string{}
	for _, w := range workloads {
		c.checkPod(w, configMaps, secrets, allowMissingSecrets)
		for _, ctr := range w.spec.Spec.Containers {
			images[ctr.Image] = append(images[ctr.Image], w.o.String())
		}
	}
	if len(images) > 1 {
		var list []string
		for img, users := range images {
			list = append(list, fmt.Sprintf("%s (%s)", img, strings.Join(users, ", ")))
		}
		sort.Strings(list)
		c.errorf("the workloads run different images, so a replay would run other code than the worker: %s", strings.Join(list, "; "))
	}

	for _, o := range deployments {
		d := o.obj.(*appsv1.Deployment)
		c.checkSelects(o, "spec.selector", d.Spec.Selector, d.Spec.Template.Labels)
		c.checkGracePeriod(o, &d.Spec.Template, configMaps)
	}
	for _, o := range services {
		s := o.obj.(*corev1.Service)
		d := selectedDeployment(deployments, labels.SelectorFromSet(s.Spec.Selector))
		if d == nil {
			c.errorf("%s: spec.selector %v selects no Deployment's pods", o, s.Spec.Selector)
			continue
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort.Type == intstr.String && !hasContainerPort(&d.obj.(*appsv1.Deployment).Spec.Template, p.TargetPort.StrVal) {
				c.errorf("%s: port %s: targetPort %q is no container port of %s", o, p.Name, p.TargetPort.StrVal, d)
			}
		}
	}
	var minAvailable int
	for _, o := range pdbs {
		p := o.obj.(*policyv1.PodDisruptionBudget)
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil {
			c.errorf("%s: spec.selector: %v", o, err)
			continue
		}
		if selectedDeployment(deployments, sel) == nil {
			c.errorf("%s: spec.selector selects no Deployment's pods", o)
		}
		if p.Spec.MinAvailable != nil {
			minAvailable = p.Spec.MinAvailable.IntValue()
		}
	}
	for _, o := range monitors {
		m := o.obj.(*monitoringv1.ServiceMonitor)
		sel, err := metav1.LabelSelectorAsSelector(&m.Spec.Selector)
		if err != nil {
			c.errorf("%s: spec.selector: %v", o, err)
			continue
		}
		var svc *corev1.Service
		for _, s := range services {
			if x := s.obj.(*corev1.Service); sel.Matches(labels.Set(x.Labels)) {
				svc = x
			}
		}
		if svc == nil {
			c.errorf("%s: spec.selector selects no Service (it matches Service labels, not pod labels)", o)
			continue
		}
		for _, ep := range m.Spec.Endpoints {
			found := false
			for _, p := range svc.Spec.Ports {
				found = found || (ep.Port != "" && p.Name == ep.Port)
			}
			if !found {
				c.errorf("%s: endpoint port %q is no port name of Service %s", o, ep.Port, svc.Name)
			}
		}
	}
	for _, o := range scaled {
		c.checkScaledObject(o, deployments, configMaps, minAvailable)
	}
}

func (c *checker) checkSelects(o *object, where string, sel *metav1.LabelSelector, podLabels map[string]string) {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		c.errorf("%s: %s: %v", o, where, err)
		return
	}
	if s.Empty() || !s.Matches(labels.Set(podLabels)) {
		c.errorf("%s: %s does not select the pod template's labels %v", o, where, podLabels)
	}
}

func selectedDeployment(deployments []*object, sel labels.Selector) *object {
	if sel.Empty() {
		return nil
	}
	for _, o := range deployments {
		if sel.Matches(labels.Set(o.obj.(*appsv1.Deployment).Spec.Template.Labels)) {
			return o
		}
	}
	return nil
}

func hasContainerPort(t *corev1.PodTemplateSpec, name string) bool {
	for _, ctr := range t.Spec.Containers {
		for _, p := range ctr.Ports {
			if p.Name == name {
				return true
			}
		}
	}
	return false
}

// env returns a container's environment as cio-relay sees it: envFrom
// ConfigMaps first, env entries winning.
func env(ctr *corev1.Container, configMaps map[string]*corev1.ConfigMap) map[string]string {
	m := map[string]string{}
	for _, ef := range ctr.EnvFrom {
		if ef.ConfigMapRef != nil {
			if cm := configMaps[ef.ConfigMapRef.Name]; cm != nil {
				for k, v := range cm.Data {
					m[ef.Prefix+k] = v
				}
			}
		}
	}
	for _, e := range ctr.Env {
		m[e.Name] = e.Value
	}
	return m
}

// fileVars are cio-relay's settings that name a file the container must
// have.
func isFileVar(name string) bool {
	switch name {
	case "NATS_CREDS", "NATS_NKEY", "NATS_CA", "NATS_CERT", "NATS_KEY":
		return true
	}
	return strings.HasSuffix(name, "_FILE") && name != "RELAY_DRY_RUN_FILE"
}

// checkPod checks a pod template: security settings, resources, references
// to ConfigMaps and Secrets, and that every file setting names a file of a
// mounted Secret key.
func (c *checker) checkPod(w workload, configMaps map[string]*corev1.ConfigMap, secrets map[string]*corev1.Secret, allowMissingSecrets bool) {
	o, pod := w.o, &w.spec.Spec
	c.checkLabels(o, "pod template labels", w.spec.Labels)
	psc := pod.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		c.errorf("%s: automountServiceAccountToken must be false: cio-relay does not use the Kubernetes API", o)
	}
	volumes := map[string]*corev1.Volume{}
	for i := range pod.Volumes {
		v := &pod.Volumes[i]
		volumes[v.Name] = v
		if v.Secret != nil {
			if _, ok := secrets[v.Secret.SecretName]; !ok && !allowMissingSecrets {
				c.errorf("%s: volume %s: Secret %q is not among the inputs", o, v.Name, v.Secret.SecretName)
			}
		}
	}
	if len(pod.InitContainers) > 0 {
		c.errorf("%s: unexpected init containers", o)
	}
	for i := range pod.Containers {
		ctr := &pod.Containers[i]
		where := fmt.Sprintf("%s: container %s", o, ctr.Name)
		sc := ctr.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		runAsNonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (sc.RunAsNonRoot == nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot)
		if !runAsNonRoot {
			c.errorf("%s: runAsNonRoot must be true", where)
		}
		uid := sc.RunAsUser
		if uid == nil {
			uid = psc.RunAsUser
		}
		if uid == nil || *uid == 0 {
			c.errorf("%s: runAsUser must be set to a non-root uid (the image's is 65532)", where)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			c.errorf("%s: readOnlyRootFilesystem must be true", where)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			c.errorf("%s: allowPrivilegeEscalation must be false", where)
		}
		if sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) > 0 {
			c.errorf("%s: capabilities must drop ALL and add none", where)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			c.errorf("%s: seccompProfile must be RuntimeDefault", where)
		}
		if _, ok := ctr.Resources.Limits[corev1.ResourceMemory]; !ok {
			c.errorf("%s: no memory limit", where)
		}
		if _, ok := ctr.Resources.Requests[corev1.ResourceMemory]; !ok {
			c.errorf("%s: no memory request", where)
		}
		if _, ok := ctr.Resources.Requests[corev1.ResourceCPU]; !ok {
			c.errorf("%s: no cpu request", where)
		}
		for _, p := range ctr.Ports {
			if p.Name != "" {
				if msgs := validation.IsValidPortName(p.Name); len(msgs) > 0 {
					c.errorf("%s: port name %q: %s", where, p.Name, strings.Join(msgs, "; "))
				}
			}
		}
		for _, e := range ctr.Env {
			if msgs := validation.IsEnvVarName(e.Name); len(msgs) > 0 {
				c.errorf("%s: env %q: %s", where, e.Name, strings.Join(msgs, "; "))
			}
		}
		for _, ef := range ctr.EnvFrom {
			if ef.ConfigMapRef != nil && configMaps[ef.ConfigMapRef.Name] == nil {
				c.errorf("%s: envFrom: ConfigMap %q is not among the inputs", where, ef.ConfigMapRef.Name)
			}
		}
		vars := env(ctr, configMaps)
		if vars["NATS_URL"] == "" {
			c.errorf("%s: NATS_URL is unset: cio-relay would run an embedded NATS server in the pod", where)
		}
		for _, name := range sortedKeys(vars) {
			if isFileVar(name) && vars[name] != "" {
				c.checkFile(where, name, vars[name], ctr, volumes, secrets)
			}
		}
		httpPort := ""
		if addr, ok := vars["RELAY_HTTP_ADDR"]; ok && addr != "off" {
			_, httpPort, _ = net.SplitHostPort(addr)
		}
		for _, pr := range []struct {
			name  string
			probe *corev1.Probe
		}{{"startupProbe", ctr.StartupProbe}, {"livenessProbe", ctr.LivenessProbe}, {"readinessProbe", ctr.ReadinessProbe}} {
			if pr.probe == nil || pr.probe.HTTPGet == nil {
				continue
			}
			port := pr.probe.HTTPGet.Port
			num := port.String()
			if port.Type == intstr.String {
				num = ""
				for _, p := range ctr.Ports {
					if p.Name == port.StrVal {
						num = strconv.Itoa(int(p.ContainerPort))
					}
				}
				if num == "" {
					c.errorf("%s: %s: port %q is no container port", where, pr.name, port.StrVal)
					continue
				}
			}
			if httpPort != "" && num != httpPort {
				c.errorf("%s: %s probes port %s but RELAY_HTTP_ADDR listens on %s", where, pr.name, num, httpPort)
			}
		}
	}
}

// checkFile checks that path, the value of a file setting, is a key of a
// Secret mounted as a whole directory (subPath mounts are not updated when
// the Secret changes, which breaks key rotation).
func (c *checker) checkFile(where, name, p string, ctr *corev1.Container, volumes map[string]*corev1.Volume, secrets map[string]*corev1.Secret) {
	p = path.Clean(p)
	for _, m := range ctr.VolumeMounts {
		dir := path.Clean(m.MountPath)
		if path.Dir(p) != dir {
			continue
		}
		v := volumes[m.Name]
		switch {
		case v == nil:
			c.errorf("%s: volumeMount %s: no such volume", where, m.Name)
		case v.Secret == nil:
			c.errorf("%s: %s=%s is on volume %s, which is no Secret", where, name, p, m.Name)
		case m.SubPath != "":
			c.errorf("%s: %s=%s: volume %s is mounted with subPath, which the kubelet never updates", where, name, p, m.Name)
		default:
			key := path.Base(p)
			for _, it := range v.Secret.Items {
				if it.Path == key {
					key = it.Key
				}
			}
			if s, ok := secrets[v.Secret.SecretName]; ok {
				_, inData := s.Data[key]
				_, inString := s.StringData[key]
				if !inData && !inString {
					c.errorf("%s: %s=%s: Secret %s has no key %q", where, name, p, s.Name, key)
				}
			}
		}
		return
	}
	c.errorf("%s: %s=%s is on no mounted volume, so the file cannot exist (the image has only the binary)", where, name, p)
}

// checkGracePeriod checks that Kubernetes waits longer than the worker's
// shutdown timeout before it kills the pod.
func (c *checker) checkGracePeriod(o *object, t *corev1.PodTemplateSpec, configMaps map[string]*corev1.ConfigMap) {
	grace := int64(30)
	if t.Spec.TerminationGracePeriodSeconds != nil {
		grace = *t.Spec.TerminationGracePeriodSeconds
	}
	for i := range t.Spec.Containers {
		timeout := 25 * time.Second // cio-relay's default
		if v := env(&t.Spec.Containers[i], configMaps)["RELAY_SHUTDOWN_TIMEOUT"]; v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				c.errorf("%s: RELAY_SHUTDOWN_TIMEOUT %q: %v", o, v, err)
				continue
			}
			timeout = d
		}
		if time.Duration(grace)*time.Second < timeout+5*time.Second {
			c.errorf("%s: terminationGracePeriodSeconds %d must exceed RELAY_SHUTDOWN_TIMEOUT %v by at least 5s, or the pod is killed mid-flush", o, grace, timeout)
		}
	}
}

// kedaJetStream are the nats-jetstream trigger's metadata parameters, as
// KEDA documents them; required ones are true.
var kedaJetStream = map[string]bool{
	"natsServerMonitoringEndpoint": true,
	"account":                      true,
	"stream":                       true,
	"consumer":                     true,
	"lagThreshold":                 true,
	"activationLagThreshold":       false,
	"useHttps":                     false,
}

func (c *checker) checkScaledObject(o *object, deployments []*object, configMaps map[string]*corev1.ConfigMap, pdbMinAvailable int) {
	var so struct {
		Spec struct {
			ScaleTargetRef struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Name       string `json:"name"`
			} `json:"scaleTargetRef"`
			MinReplicaCount *int `json:"minReplicaCount"`
			MaxReplicaCount *int `json:"maxReplicaCount"`
			Triggers        []struct {
				Type     string         `json:"type"`
				Metadata map[string]any `json:"metadata"`
			} `json:"triggers"`
		} `json:"spec"`
	}
	b, _ := yaml.Marshal(o.obj)
	if err := yaml.Unmarshal(b, &so); err != nil {
		c.errorf("%s: %v", o, err)
		return
	}
	ref := so.Spec.ScaleTargetRef
	var target *appsv1.Deployment
	for _, d := range deployments {
		if d.name == ref.Name {
			target = d.obj.(*appsv1.Deployment)
		}
	}
	if target == nil || (ref.Kind != "" && ref.Kind != "Deployment") {
		c.errorf("%s: scaleTargetRef %s %q is no Deployment among the inputs", o, ref.Kind, ref.Name)
	}
	minR, maxR := 0, 100 // KEDA's defaults
	if so.Spec.MinReplicaCount != nil {
		minR = *so.Spec.MinReplicaCount
	}
	if so.Spec.MaxReplicaCount != nil {
		maxR = *so.Spec.MaxReplicaCount
	}
	if minR > maxR {
		c.errorf("%s: minReplicaCount %d > maxReplicaCount %d", o, minR, maxR)
	}
	if minR <= pdbMinAvailable {
		c.errorf("%s: minReplicaCount %d must exceed the PodDisruptionBudget's minAvailable %d, or no node can be drained", o, minR, pdbMinAvailable)
	}
	if len(so.Spec.Triggers) == 0 {
		c.errorf("%s: no triggers", o)
	}
	for i, t := range so.Spec.Triggers {
		where := fmt.Sprintf("%s: triggers[%d]", o, i)
		if t.Type != "nats-jetstream" {
			c.errorf("%s: type %q, want nats-jetstream", where, t.Type)
			continue
		}
		for k, v := range t.Metadata {
			if _, ok := kedaJetStream[k]; !ok {
				c.errorf("%s: unknown metadata %q", where, k)
			}
			if _, ok := v.(string); !ok {
				c.errorf("%s: metadata %s must be a string, is %T", where, k, v)
			}
		}
		for k, required := range kedaJetStream {
			if s, _ := t.Metadata[k].(string); required && s == "" {
				c.errorf("%s: metadata %s is required", where, k)
			}
		}
		for _, k := range []string{"lagThreshold", "activationLagThreshold"} {
			if s, ok := t.Metadata[k].(string); ok {
				if n, err := strconv.ParseInt(s, 10, 64); err != nil || n < 0 || (k == "lagThreshold" && n == 0) {
					c.errorf("%s: metadata %s %q is not a positive integer", where, k, s)
				}
			}
		}
		if target == nil {
			continue
		}
		// The trigger must watch the consumer the worker consumes from.
		for _, ctr := range target.Spec.Template.Spec.Containers {
			vars := env(&ctr, configMaps)
			for k, setting := range map[string]string{"stream": "RELAY_STREAM", "consumer": "RELAY_CONSUMER"} {
				want := vars[setting]
				if want == "" {
					want = map[string]string{"stream": "CIO", "consumer": "cio-relay"}[k]
				}
				if got, _ := t.Metadata[k].(string); got != want {
					c.errorf("%s: metadata %s %q, but the worker's %s is %q", where, k, got, setting, want)
				}
			}
		}
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
