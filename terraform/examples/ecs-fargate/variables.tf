variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like an AWS region, e.g. eu-west-1."
  }
}

variable "name" {
  description = "Name of the cluster, service, task family and prefix of the other resources."
  type        = string
  default     = "logferry-demo"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 lower-case letters, digits or hyphens."
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

variable "subnet_ids" {
  description = "Subnets of the service (private subnets with a NAT gateway or VPC endpoints for S3, CloudWatch Logs and ECR)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must hold at least one subnet."
  }
}

variable "vpc_id" {
  description = "VPC of those subnets (for the task's security group)."
  type        = string
}

variable "indexer_zip_path" {
  description = "Path of the indexer's bootstrap.zip (lambda/build.sh); empty: no indexer."
  type        = string
  default     = ""
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups."
  type        = number
  default     = 30
}

variable "compactor_enabled" {
  description = "Compact each closed hour into Parquet (Glue table logs_parquet) in the indexer's function; needs indexer_zip_path."
  type        = bool
  default     = true
}

variable "compact_columns" {
  description = "Typed Parquet columns of the application's own top-level fields: name -> string, bigint, double or boolean (the demo app's counter n by default)."
  type        = map(string)
  default     = { n = "bigint" }
}

variable "compacted_input_expiration_days" {
  description = "Days after which compacted NDJSON objects expire (0: keep them)."
  type        = number
  default     = 7
}
