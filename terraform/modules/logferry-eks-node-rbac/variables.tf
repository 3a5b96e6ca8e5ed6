variable "name" {
  description = "Name of the ClusterRole and its binding (eks/daemonset/rbac.yaml uses logferry-node)."
  type        = string
  default     = "logferry-node"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.name)) && length(var.name) <= 253
    error_message = "name must be a Kubernetes object name (lower-case letters, digits, '-' and '.')."
  }
}

variable "namespace" {
  description = "Namespace of the daemon's service account (eks/daemonset/ is applied to kube-system)."
  type        = string
  default     = "kube-system"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace)) && length(var.namespace) <= 63
    error_message = "namespace must be a Kubernetes namespace name."
  }
}

variable "service_account" {
  description = "The daemon's service account (eks/daemonset/serviceaccount.yaml names it logferry-node)."
  type        = string
  default     = "logferry-node"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.service_account))
    error_message = "service_account must be a Kubernetes object name."
  }
}

variable "namespace_labels" {
  description = "Also get/list/watch namespaces, for the router's `namespace_labels = true`. Off: pods only."
  type        = bool
  default     = true
}
