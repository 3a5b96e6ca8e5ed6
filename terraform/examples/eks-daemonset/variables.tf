variable "region" {
  description = "AWS region of the EKS cluster."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like an AWS region, e.g. eu-west-1."
  }
}

variable "name" {
  description = "Prefix of the resources (role, log bucket resources)."
  type        = string
  default     = "logferry-eks-node"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 lower-case letters, digits or hyphens."
  }
}

variable "cluster_name" {
  description = "An existing EKS cluster with an IAM OIDC provider (eksctl utils associate-iam-oidc-provider)."
  type        = string

  validation {
    condition     = length(var.cluster_name) > 0
    error_message = "cluster_name must be set."
  }
}

variable "namespace" {
  description = "Namespace of the daemon (eks/daemonset/kustomization.yaml applies it to kube-system)."
  type        = string
  default     = "kube-system"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a Kubernetes namespace name."
  }
}

variable "service_account" {
  description = "The daemon's service account: eks/daemonset/serviceaccount.yaml names it logferry-node."
  type        = string
  default     = "logferry-node"
}

variable "namespace_labels" {
  description = "Let the daemon read namespaces too, for the router's `namespace_labels = true`."
  type        = bool
  default     = true
}

variable "bucket_name" {
  description = "Name of the log bucket to create (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}
