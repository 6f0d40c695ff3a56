{{/*
The chart name, overridable with nameOverride.
*/}}
{{- define "certwright.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name that prefixes every resource: fullnameOverride, else <release>-<chart>
(just <release> when it already contains the chart name). Kept to 52 characters so that
suffixes such as "-controller" fit the 63-character limit of names and labels.
*/}}
{{- define "certwright.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "certwright.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "certwright.labels" -}}
helm.sh/chart: {{ include "certwright.chart" . }}
app.kubernetes.io/name: {{ include "certwright.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: certwright
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component. Argument: (dict "ctx" $ "component" "controller").
*/}}
{{- define "certwright.selectorLabels" -}}
app.kubernetes.io/name: {{ include "certwright.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
All labels of one component's resources. Argument: (dict "ctx" $ "component" "webhook").
*/}}
{{- define "certwright.componentLabels" -}}
{{ include "certwright.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "certwright.controller.fullname" -}}
{{ include "certwright.fullname" . }}-controller
{{- end }}

{{- define "certwright.webhook.fullname" -}}
{{ include "certwright.fullname" . }}-webhook
{{- end }}

{{- define "certwright.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (include "certwright.controller.fullname" .) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "certwright.webhook.serviceAccountName" -}}
{{- if .Values.webhook.serviceAccount.create }}
{{- default (include "certwright.webhook.fullname" .) .Values.webhook.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.webhook.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The webhook's serving certificate (and its Secret, mounted at /tls), and the CA that
signs it. cert-manager's cainjector copies that CA into the ValidatingWebhookConfiguration.
*/}}
{{- define "certwright.webhook.servingCertName" -}}
{{ include "certwright.webhook.fullname" . }}-tls
{{- end }}

{{- define "certwright.webhook.caName" -}}
{{ include "certwright.webhook.fullname" . }}-ca
{{- end }}

{{- define "certwright.clusterResourceNamespace" -}}
{{- default .Release.Namespace .Values.clusterResourceNamespace }}
{{- end }}

{{- define "certwright.leaderElectionNamespace" -}}
{{- default .Release.Namespace .Values.controller.leaderElection.namespace }}
{{- end }}

{{/*
An image reference. Argument: (dict "image" .Values.controller.image "ctx" $).
`image.repository`, when set, is the whole repository; otherwise it is
`<imageRegistry>/<imageNamespace>/<image.name>` (as cert-manager's chart composes it).
The digest wins over the tag; the tag defaults to the chart's appVersion.
*/}}
{{- define "certwright.image" -}}
{{- $repository := .image.repository }}
{{- if not $repository }}
{{- $parts := list }}
{{- with .ctx.Values.imageRegistry }}{{ $parts = append $parts (trimSuffix "/" .) }}{{ end }}
{{- with .ctx.Values.imageNamespace }}{{ $parts = append $parts (trimSuffix "/" .) }}{{ end }}
{{- $repository = join "/" (append $parts .image.name) }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repository .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.image.tag | default .ctx.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The namespaces whose Secrets certwright may read, comma-separated; empty when it may
read every namespace (`secretAccess.scope: Cluster`). Other scopes always include the
cluster resource namespace, where InternalClusterIssuers keep their Secrets.
*/}}
{{- define "certwright.secretNamespaces" -}}
{{- if ne .Values.secretAccess.scope "Cluster" }}
{{- $namespaces := list (include "certwright.clusterResourceNamespace" .) }}
{{- if eq .Values.secretAccess.scope "Namespaces" }}
{{- range .Values.secretAccess.namespaces }}{{ $namespaces = append $namespaces . }}{{ end }}
{{- end }}
{{- join "," (uniq $namespaces) }}
{{- end }}
{{- end }}

{{/*
Pod affinity: the user's when set, else a preference for spreading replicas across nodes.
Argument: (dict "ctx" $ "component" "controller" "affinity" .Values.controller.affinity).
*/}}
{{- define "certwright.affinity" -}}
{{- if .affinity }}
{{- toYaml .affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "certwright.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end }}
{{- end }}
