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
  default     = "logferry-eks-demo"

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
  description = "Namespace of the pods (kubectl apply -k eks/irsa/ -n NAMESPACE)."
  type        = string
  default     = "default"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a Kubernetes namespace name."
  }
}

variable "service_account" {
  description = "Service account of the pods: eks/irsa/serviceaccount.yaml names it logferry-web."
  type        = string
  default     = "logferry-web"
}

variable "bucket_name" {
  description = "Name of the log bucket to create (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}
