variable "name" {
  description = "Name of the IAM role."
  type        = string

  validation {
    condition     = can(regex("^[\\w+=,.@-]{1,64}$", var.name))
    error_message = "name must be a valid IAM role name (1-64 of letters, digits and +=,.@_-)."
  }
}

variable "cluster_name" {
  description = "The EKS cluster, with an IAM OIDC provider (eksctl utils associate-iam-oidc-provider)."
  type        = string

  validation {
    condition     = length(var.cluster_name) > 0
    error_message = "cluster_name must be set."
  }
}

variable "namespace" {
  description = "Namespace of the service account that assumes the role."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a Kubernetes namespace name."
  }
}

variable "service_account" {
  description = "The service account that assumes the role (only it: the trust names it exactly)."
  type        = string
}

variable "policy_json" {
  description = "The role's one inline policy (module logferry-iam's json output)."
  type        = string
}
