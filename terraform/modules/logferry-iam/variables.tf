variable "region" {
  description = "AWS region of the log group and the delivery stream (their ARNs)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like an AWS region, e.g. eu-west-1."
  }
}

variable "s3_bucket" {
  description = "Bucket of the s3 sink (empty: no s3 sink)."
  type        = string
  default     = ""

  validation {
    condition     = var.s3_bucket == "" || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.s3_bucket))
    error_message = "s3_bucket must be empty or a valid bucket name."
  }
}

variable "s3_key_prefix" {
  description = "key_prefix of the s3 sink: {field} and strftime. The IAM policy covers the part before the first { or %. The Glue table of logferry-destinations expects <prefix>{ecs_cluster}/%Y/%m/%d/%H/."
  type        = string
  default     = "logs/{ecs_cluster}/%Y/%m/%d/%H/"

  validation {
    condition     = !startswith(var.s3_key_prefix, "/") && endswith(var.s3_key_prefix, "/")
    error_message = "s3_key_prefix must not start with / and must end with /."
  }
}

variable "s3_kms_key_arn" {
  description = "KMS key for SSE-KMS on the objects the router writes (empty: the bucket's default encryption). Adds kms:GenerateDataKey and kms:Decrypt on this key only."
  type        = string
  default     = ""

  validation {
    condition     = var.s3_kms_key_arn == "" || can(regex("^arn:aws[a-z-]*:kms:", var.s3_kms_key_arn))
    error_message = "s3_kms_key_arn must be empty or a KMS key ARN."
  }
}

variable "cloudwatch_log_group" {
  description = "Existing log group of the cloudwatch_logs sink (empty: no such sink). Create it with logferry-destinations."
  type        = string
  default     = ""

  validation {
    condition     = var.cloudwatch_log_group == "" || can(regex("^[A-Za-z0-9_./#-]{1,512}$", var.cloudwatch_log_group))
    error_message = "cloudwatch_log_group must be empty or a log group name without templates."
  }
}

variable "firehose_delivery_stream" {
  description = "Firehose delivery stream of the firehose sink (empty: no such sink)."
  type        = string
  default     = ""

  validation {
    condition     = var.firehose_delivery_stream == "" || can(regex("^[A-Za-z0-9_.-]{1,64}$", var.firehose_delivery_stream))
    error_message = "firehose_delivery_stream must be empty or a delivery stream name."
  }
}

variable "kinesis_stream" {
  description = "Kinesis data stream of the kinesis_streams sink (empty: no such sink)."
  type        = string
  default     = ""

  validation {
    condition     = var.kinesis_stream == "" || can(regex("^[A-Za-z0-9_.-]{1,128}$", var.kinesis_stream))
    error_message = "kinesis_stream must be empty or a stream name."
  }
}
