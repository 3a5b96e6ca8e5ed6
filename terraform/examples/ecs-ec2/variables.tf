variable "region" {
  description = "AWS region of the cluster."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like an AWS region, e.g. eu-west-1."
  }
}

variable "name" {
  description = "Name of the service, task family and prefix of the other resources."
  type        = string
  default     = "logferry-ec2-demo"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 lower-case letters, digits or hyphens."
  }
}

variable "cluster_name" {
  description = "An existing ECS cluster with EC2 container instances (EC2 launch type)."
  type        = string

  validation {
    condition     = length(var.cluster_name) > 0
    error_message = "cluster_name must be set."
  }
}

variable "instance_role_name" {
  description = "IAM role of the container instances' instance profile: the router's policy is attached to it, and the router gets its credentials from IMDSv2 (hop limit 2)."
  type        = string

  validation {
    condition     = length(var.instance_role_name) > 0
    error_message = "instance_role_name must be set."
  }
}

variable "bucket_name" {
  description = "Name of the log bucket to create (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "router_image" {
  description = "The router image built from router/Dockerfile and pushed to ECR (tag or digest)."
  type        = string

  validation {
    condition     = length(var.router_image) > 0 && !endswith(var.router_image, ":latest")
    error_message = "router_image must be set and must not use :latest."
  }
}

variable "app_image" {
  description = "The application image. The default writes one JSON line to /var/log/app/app.log every 5 s."
  type        = string
  default     = "public.ecr.aws/docker/library/busybox:1.37"
}

variable "log_host_path" {
  description = "Host directory bind-mounted as the shared log volume. Empty: a task-scoped Docker volume."
  type        = string
  default     = ""

  validation {
    condition     = var.log_host_path == "" || startswith(var.log_host_path, "/")
    error_message = "log_host_path must be empty or an absolute path."
  }
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups."
  type        = number
  default     = 30
}
