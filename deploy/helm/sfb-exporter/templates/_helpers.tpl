{{/* Names and labels, as `helm create` makes them. */}}
{{- define "sfb-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sfb-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sfb-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sfb-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Every pod of the release, the exporter's and the backfill's. */}}
{{- define "sfb-exporter.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "sfb-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The exporter's pods alone: the Service must not select the backfill's. */}}
{{- define "sfb-exporter.selectorLabels" -}}
{{ include "sfb-exporter.releaseSelectorLabels" . }}
app.kubernetes.io/component: exporter
{{- end }}

{{- define "sfb-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sfb-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sfb-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The replicas the exporter runs with. */}}
{{- define "sfb-exporter.replicas" -}}
{{- if .Values.sharding.enabled }}{{ .Values.sharding.shards }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/*
What the values ask for, as "true" or "": templates compare with eq or test for emptiness.
*/}}
{{- define "sfb-exporter.usesConfigFile" -}}
{{- if or .Values.configFile.existingSecret .Values.configFile.tenants }}true{{ end }}
{{- end }}

{{/* The single-tenant identity of azure.*: neither demo nor configFile. */}}
{{- define "sfb-exporter.usesAzureIdentity" -}}
{{- if not (or .Values.demo (include "sfb-exporter.usesConfigFile" .)) }}true{{ end }}
{{- end }}

{{- define "sfb-exporter.usesWebConfig" -}}
{{- if or .Values.webConfig.existingSecret .Values.webConfig.config }}true{{ end }}
{{- end }}

{{/* exporter-toolkit's TLSConfig.IsEnabled: any of these keys asks for TLS. */}}
{{- define "sfb-exporter.webTls" -}}
{{- if include "sfb-exporter.usesWebConfig" . }}
{{- $tls := default (dict) .Values.webConfig.config.tls_server_config }}
{{- $asks := false }}
{{- range $key := list "cert" "cert_file" "key" "key_file" "client_ca" "client_ca_file" "client_auth_type" }}
{{- if index $tls $key }}{{ $asks = true }}{{ end }}
{{- end }}
{{- if or .Values.webConfig.tls $asks }}true{{ end }}
{{- end }}
{{- end }}

{{- define "sfb-exporter.webBasicAuth" -}}
{{- if include "sfb-exporter.usesWebConfig" . }}
{{- if or .Values.webConfig.basicAuth .Values.webConfig.config.basic_auth_users }}true{{ end }}
{{- end }}
{{- end }}

{{/* Whether the chart creates the Secret holding the single tenant's credential. */}}
{{- define "sfb-exporter.createsAzureSecret" -}}
{{- if include "sfb-exporter.usesAzureIdentity" . }}
{{- $a := .Values.azure }}
{{- if and (eq $a.credential "secret") $a.clientSecret.value }}true{{ end }}
{{- if and (eq $a.credential "certificate") (or $a.certificate.value $a.certificate.valueBase64) }}true{{ end }}
{{- end }}
{{- end }}

{{/* Whether a Secret (the chart's or an existing one) holds the single tenant's credential. */}}
{{- define "sfb-exporter.mountsAzureSecret" -}}
{{- if include "sfb-exporter.usesAzureIdentity" . }}
{{- if has .Values.azure.credential (list "secret" "certificate") }}true{{ end }}
{{- end }}
{{- end }}

{{- define "sfb-exporter.azureSecretName" -}}
{{- $a := .Values.azure }}
{{- $existing := ternary $a.clientSecret.existingSecret $a.certificate.existingSecret (eq $a.credential "secret") }}
{{- default (printf "%s-azure" (include "sfb-exporter.fullname" .)) $existing }}
{{- end }}

{{- define "sfb-exporter.configFileSecretName" -}}
{{- default (printf "%s-config" (include "sfb-exporter.fullname" .)) .Values.configFile.existingSecret }}
{{- end }}

{{- define "sfb-exporter.webConfigSecretName" -}}
{{- default (printf "%s-web-config" (include "sfb-exporter.fullname" .)) .Values.webConfig.existingSecret }}
{{- end }}

{{/* Key of the PKCS#12 password in the certificate's Secret; empty without a password. */}}
{{- define "sfb-exporter.certificatePasswordKey" -}}
{{- $c := .Values.azure.certificate }}
{{- if $c.existingSecret }}{{ $c.passwordKey }}{{ else if $c.password }}client-certificate-password{{ end }}
{{- end }}

{{/*
The data of each Secret the chart creates for the pods. Rendered once for the Secret and once
for its checksum on the pod template, so that a changed value rolls the pods.
*/}}
{{- define "sfb-exporter.azureSecretData" -}}
{{- $a := .Values.azure }}
{{- if eq $a.credential "secret" }}
{{ $a.clientSecret.key }}: {{ $a.clientSecret.value | b64enc }}
{{- else }}
{{ $a.certificate.key }}: {{ default ($a.certificate.value | b64enc) $a.certificate.valueBase64 }}
{{- with $a.certificate.password }}
client-certificate-password: {{ . | b64enc }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sfb-exporter.configFileSecretData" -}}
{{ .Values.configFile.key }}: {{ dict "tenants" .Values.configFile.tenants | toYaml | b64enc }}
{{- range $name, $text := .Values.configFile.files }}
{{ $name }}: {{ $text | b64enc }}
{{- end }}
{{- end }}

{{- define "sfb-exporter.webConfigSecretData" -}}
{{ .Values.webConfig.key }}: {{ .Values.webConfig.config | toYaml | b64enc }}
{{- range $name, $text := .Values.webConfig.files }}
{{ $name }}: {{ $text | b64enc }}
{{- end }}
{{- end }}

{{/* Values that cannot work together, refused with one line saying what to change. */}}
{{- define "sfb-exporter.validate" -}}
{{- $v := .Values }}
{{- $a := $v.azure }}
{{- if and $v.demo (include "sfb-exporter.usesConfigFile" .) }}
{{- fail "demo and configFile exclude each other: demo serves simulated data without any tenant" }}
{{- end }}
{{- if include "sfb-exporter.usesAzureIdentity" . }}
{{- if not $a.tenantId }}
{{- fail "azure.tenantId is required (the directory ID); for many tenants set configFile instead, or demo: true to try the chart" }}
{{- end }}
{{- if and (has $a.credential (list "secret" "certificate" "workload-identity")) (not $a.clientId) }}
{{- fail (printf "azure.clientId is required with azure.credential %s (the application ID)" $a.credential) }}
{{- end }}
{{- if eq $a.credential "secret" }}
{{- if eq (empty $a.clientSecret.existingSecret) (empty $a.clientSecret.value) }}
{{- fail "azure.credential secret: set exactly one of azure.clientSecret.existingSecret (a Secret holding the value) and azure.clientSecret.value" }}
{{- end }}
{{- end }}
{{- if eq $a.credential "certificate" }}
{{- $c := $a.certificate }}
{{- $given := or $c.value $c.valueBase64 }}
{{- if eq (empty $c.existingSecret) (empty $given) }}
{{- fail "azure.credential certificate: set exactly one of azure.certificate.existingSecret (a Secret holding the file) and azure.certificate.value or valueBase64" }}
{{- end }}
{{- if and $c.value $c.valueBase64 }}
{{- fail "azure.certificate: set value (PEM text) or valueBase64 (any file, base64-encoded), not both" }}
{{- end }}
{{- if and $c.existingSecret $c.password }}
{{- fail "azure.certificate.password is for the Secret the chart creates: with existingSecret, name the password's key in passwordKey" }}
{{- end }}
{{- if and (not $c.existingSecret) $c.passwordKey }}
{{- fail "azure.certificate.passwordKey names a key of existingSecret: without one, give the password in azure.certificate.password" }}
{{- end }}
{{- end }}
{{- end }}
{{- $f := $v.configFile }}
{{- if and $f.existingSecret $f.tenants }}
{{- fail "configFile: set existingSecret or tenants, not both" }}
{{- end }}
{{- if and $f.files (not $f.tenants) }}
{{- fail "configFile.files go into the Secret the chart creates from configFile.tenants: with existingSecret, put them into that Secret" }}
{{- end }}
{{- if and $v.sharding.enabled (not (include "sfb-exporter.usesConfigFile" .)) }}
{{- fail "sharding splits the tenants of configFile: set configFile.existingSecret or configFile.tenants" }}
{{- end }}
{{- $w := $v.webConfig }}
{{- if and $w.existingSecret $w.config }}
{{- fail "webConfig: set existingSecret or config, not both" }}
{{- end }}
{{- if and $w.files (not $w.config) }}
{{- fail "webConfig.files go into the Secret the chart creates from webConfig.config: with existingSecret, put them into that Secret" }}
{{- end }}
{{- if and (include "sfb-exporter.webBasicAuth" .) (not (and $w.probeAuth.username $w.probeAuth.password)) }}
{{- fail "webConfig turns on basic auth, which covers /healthz and /readyz: set webConfig.probeAuth.username and password for the probes" }}
{{- end }}
{{- $m := $v.serviceMonitor }}
{{- if and $m.basicAuth.existingSecret (or $m.basicAuth.username $m.basicAuth.password) }}
{{- fail "serviceMonitor.basicAuth: set existingSecret or username and password, not both" }}
{{- end }}
{{- if and $m.enabled (include "sfb-exporter.webBasicAuth" .) (not (or $m.basicAuth.existingSecret (and $m.basicAuth.username $m.basicAuth.password))) }}
{{- fail "webConfig turns on basic auth: set serviceMonitor.basicAuth (existingSecret, or username and password) so that Prometheus can log in" }}
{{- end }}
{{- if and $v.backfill.enabled (not $v.backfill.prometheus.claimName) }}
{{- fail "backfill.prometheus.claimName is required: the PersistentVolumeClaim of the Prometheus to backfill" }}
{{- end }}
{{- end }}

{{/*
Arguments shared by the exporter and backfill (the exporter's global flags), before any
subcommand: identity, tenants, cloud, reports and logging.
*/}}
{{- define "sfb-exporter.commonArgs" -}}
{{- $a := .Values.azure }}
{{- if .Values.demo }}
- --demo
{{- else if include "sfb-exporter.usesConfigFile" . }}
- --config.file=/etc/sfb-exporter/config/{{ .Values.configFile.key }}
{{- else }}
- --azure.credential={{ $a.credential }}
{{- if eq $a.credential "secret" }}
- --azure.client-secret-file=/etc/sfb-exporter/azure/{{ $a.clientSecret.key }}
{{- end }}
{{- with include "sfb-exporter.certificatePasswordKey" . }}
{{- if eq $a.credential "certificate" }}
- --azure.client-certificate-password-file=/etc/sfb-exporter/azure/{{ . }}
{{- end }}
{{- end }}
{{- end }}
{{- with $a.cloud }}
- --azure.cloud={{ . }}
{{- end }}
{{- with .Values.exporter.reports }}
- --reports={{ join "," . }}
{{- end }}
{{- with .Values.exporter.logLevel }}
- --log.level={{ . }}
{{- end }}
{{- with .Values.exporter.logFormat }}
- --log.format={{ . }}
{{- end }}
{{- end }}

{{/* The identity's variables; none for workload identity, whose webhook sets them. */}}
{{- define "sfb-exporter.env" -}}
{{- $a := .Values.azure }}
{{- if and (include "sfb-exporter.usesAzureIdentity" .) (ne $a.credential "workload-identity") }}
- name: AZURE_TENANT_ID
  value: {{ $a.tenantId | quote }}
{{- with $a.clientId }}
- name: AZURE_CLIENT_ID
  value: {{ . | quote }}
{{- end }}
{{- if eq $a.credential "certificate" }}
- name: AZURE_CLIENT_CERTIFICATE_PATH
  value: /etc/sfb-exporter/azure/{{ $a.certificate.key }}
{{- if $a.certificate.sendCertificateChain }}
- name: AZURE_CLIENT_SEND_CERTIFICATE_CHAIN
  value: "true"
{{- end }}
{{- end }}
{{- end }}
{{- with $a.authorityHost }}
- name: AZURE_AUTHORITY_HOST
  value: {{ . | quote }}
{{- end }}
{{- with .Values.exporter.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Mounts of the identity and tenants Secrets, for the exporter and backfill alike. */}}
{{- define "sfb-exporter.identityMounts" -}}
{{- if include "sfb-exporter.mountsAzureSecret" . }}
- name: azure
  mountPath: /etc/sfb-exporter/azure
  readOnly: true
{{- end }}
{{- if include "sfb-exporter.usesConfigFile" . }}
- name: config
  mountPath: /etc/sfb-exporter/config
  readOnly: true
{{- end }}
{{- end }}

{{- define "sfb-exporter.identityVolumes" -}}
{{- if include "sfb-exporter.mountsAzureSecret" . }}
- name: azure
  secret:
    secretName: {{ include "sfb-exporter.azureSecretName" . }}
{{- end }}
{{- if include "sfb-exporter.usesConfigFile" . }}
- name: config
  secret:
    secretName: {{ include "sfb-exporter.configFileSecretName" . }}
{{- end }}
{{- end }}

{{/* Pod labels beyond the selector's: workload identity's webhook acts on this one. */}}
{{- define "sfb-exporter.identityPodLabels" -}}
{{- if eq .Values.azure.credential "workload-identity" }}
azure.workload.identity/use: "true"
{{- end }}
{{- end }}

{{/* The probes: HTTPS with a TLS web config, a login with basic auth. */}}
{{- define "sfb-exporter.probe" -}}
{{- $root := index . 0 }}
{{- $path := index . 1 }}
{{- $timing := index . 2 }}
httpGet:
  path: {{ $path }}
  port: metrics
  {{- if include "sfb-exporter.webTls" $root }}
  scheme: HTTPS
  {{- end }}
  {{- if include "sfb-exporter.webBasicAuth" $root }}
  {{- $auth := $root.Values.webConfig.probeAuth }}
  httpHeaders:
    - name: Authorization
      value: {{ printf "Basic %s" (printf "%s:%s" $auth.username $auth.password | b64enc) | quote }}
  {{- end }}
{{ toYaml $timing }}
{{- end }}

{{/* The exporter's pod template annotations: checksums of what the chart renders itself. */}}
{{- define "sfb-exporter.podAnnotations" -}}
{{- if include "sfb-exporter.createsAzureSecret" . }}
checksum/azure: {{ include "sfb-exporter.azureSecretData" . | sha256sum }}
{{- end }}
{{- if .Values.configFile.tenants }}
checksum/config-file: {{ include "sfb-exporter.configFileSecretData" . | sha256sum }}
{{- end }}
{{- if .Values.webConfig.config }}
checksum/web-config: {{ include "sfb-exporter.webConfigSecretData" . | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "sfb-exporter.exporterEnv" -}}
{{- if .Values.sharding.enabled }}
# The pod's ordinal, 0 to shards-1 (Kubernetes 1.28 and later set this label).
- name: SHARD_INDEX
  valueFrom:
    fieldRef:
      fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
{{- end }}
{{- include "sfb-exporter.env" . }}
{{- end }}

{{- define "sfb-exporter.exporterMounts" -}}
{{- include "sfb-exporter.identityMounts" . }}
{{- if include "sfb-exporter.usesWebConfig" . }}
- name: web-config
  mountPath: /etc/sfb-exporter/web
  readOnly: true
{{- end }}
{{- if .Values.webConfig.tlsSecret }}
- name: web-tls
  mountPath: /etc/sfb-exporter/web-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "sfb-exporter.exporterVolumes" -}}
{{- include "sfb-exporter.identityVolumes" . }}
{{- if include "sfb-exporter.usesWebConfig" . }}
- name: web-config
  secret:
    secretName: {{ include "sfb-exporter.webConfigSecretName" . }}
{{- end }}
{{- with .Values.webConfig.tlsSecret }}
- name: web-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- end }}
