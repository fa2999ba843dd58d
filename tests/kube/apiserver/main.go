// Command apiserver runs a throwaway Kubernetes control plane for the tests: an embedded etcd
// and the real kube-apiserver, both on 127.0.0.1, with certificates, a service-account key and
// a bearer token made up at start. No kubelet, scheduler or controller-manager runs, so
// nothing acts on the objects: the tests play the controllers where they need to.
//
// Usage: apiserver -kubeconfig PATH [-dir DIR]
//
// When the server answers /readyz, the kubeconfig (cluster admin via the token) is written to
// PATH and one line "ready https://127.0.0.1:PORT" is printed on stdout. The process stops on
// SIGTERM/SIGINT or when its stdin closes (its parent died), and removes what it created.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

const startTimeout = 3 * time.Minute

func main() {
	kubeconfig := flag.String("kubeconfig", "", "where to write the admin kubeconfig (required)")
	dir := flag.String("dir", "", "working directory for etcd data and certificates "+
		"(default: a new temporary directory, removed on exit)")
	flag.Parse()
	if *kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "apiserver: -kubeconfig PATH is required")
		os.Exit(2)
	}
	if err := run(*kubeconfig, *dir); err != nil {
		fmt.Fprintf(os.Stderr, "apiserver: %v\n", err)
		os.Exit(1)
	}
}

func run(kubeconfig, dir string) error {
	if dir == "" {
		made, err := os.MkdirTemp("", "tiangong-kube-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(made)
		dir = made
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}

	creds, err := writeCredentials(dir)
	if err != nil {
		return fmt.Errorf("making certificates and keys: %w", err)
	}

	etcd, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return fmt.Errorf("starting etcd: %w", err)
	}
	defer etcd.Close()
	etcdURL := "http://" + etcd.Clients[0].Addr().String()

	port, err := freePort()
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", port)

	// NewAPIServerCommand installs the SIGTERM/SIGINT handler that shuts the server down
	// gracefully, so the goroutines below that signal this process start after it.
	cmd := app.NewAPIServerCommand()
	cmd.SetArgs([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + filepath.Join(dir, "serving"),
		"--tls-cert-file=" + creds.servingCert,
		"--tls-private-key-file=" + creds.servingKey,
		"--client-ca-file=" + creds.caCert,
		"--token-auth-file=" + creds.tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + creds.saKey,
		"--service-account-signing-key-file=" + creds.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		// The "kubernetes" Service's endpoints cannot point at a loopback address.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	})
	cmd.SilenceUsage = true

	// A closed stdin means the parent is gone: stop like on SIGTERM, which the API server's
	// own signal handler turns into a graceful shutdown.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}()

	// Not ready in time, or no kubeconfig: shut down and exit non-zero with the reason.
	startFailure := make(chan error, 1)
	go func() {
		err := awaitReady(server, creds)
		if err == nil {
			err = writeKubeconfig(kubeconfig, server, creds)
		}
		if err != nil {
			startFailure <- err
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			return
		}
		fmt.Printf("ready %s\n", server)
	}()

	if err := cmd.Execute(); err != nil {
		return err
	}
	select {
	case err := <-startFailure:
		return err
	default:
		return nil
	}
}

type credentials struct {
	caCert, caPEM           string
	servingCert, servingKey string
	saKey, tokenFile, token string
}

func writeCredentials(dir string) (*credentials, error) {
	certs := filepath.Join(dir, "pki")
	if err := os.MkdirAll(certs, 0o700); err != nil {
		return nil, err
	}
	c := &credentials{
		caCert:      filepath.Join(certs, "ca.crt"),
		servingCert: filepath.Join(certs, "serving.crt"),
		servingKey:  filepath.Join(certs, "serving.key"),
		saKey:       filepath.Join(certs, "service-account.key"),
		tokenFile:   filepath.Join(certs, "tokens.csv"),
	}

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tiangong-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caParsed, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	c.caPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	if err := os.WriteFile(c.caCert, []byte(c.caPEM), 0o600); err != nil {
		return nil, err
	}

	servingKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	servingTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}
	servingDER, err := x509.CreateCertificate(rand.Reader, servingTemplate, caParsed, &servingKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(c.servingCert, "CERTIFICATE", servingDER); err != nil {
		return nil, err
	}
	servingKeyDER, err := x509.MarshalECPrivateKey(servingKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(c.servingKey, "EC PRIVATE KEY", servingKeyDER); err != nil {
		return nil, err
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := writePEM(c.saKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)); err != nil {
		return nil, err
	}

	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	c.token = hex.EncodeToString(secret)
	line := fmt.Sprintf("%s,tiangong-test-admin,tiangong-test-admin,\"system:masters\"\n", c.token)
	if err := os.WriteFile(c.tokenFile, []byte(line), 0o600); err != nil {
		return nil, err
	}
	return c, nil
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

func startEtcd(dataDir string) (*embed.Etcd, error) {
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "tiangong-test"
	cfg.Dir = dataDir
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = true
	// Port 0: the kernel picks the client port; the listener tells which one it took.
	client := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(startTimeout):
		e.Close()
		return nil, errors.New("etcd did not become ready in time")
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// awaitReady polls /readyz with the admin token until it answers 200.
func awaitReady(server string, c *credentials) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(c.caPEM))
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	deadline := time.Now().Add(startTimeout)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		req, err := http.NewRequest(http.MethodGet, server+"/readyz", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after %s (last /readyz: %s)", startTimeout, last)
}

func writeKubeconfig(path, server string, c *credentials) error {
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: tiangong-test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: tiangong-test-admin
  user:
    token: %s
contexts:
- name: tiangong-test
  context:
    cluster: tiangong-test
    user: tiangong-test-admin
current-context: tiangong-test
`, server, base64.StdEncoding.EncodeToString([]byte(c.caPEM)), c.token)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
