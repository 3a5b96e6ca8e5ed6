# -- the container ---------------------------------------------------------------------------

variable "name" {
  description = "Name of the router container in the task definition."
  type        = string
  default     = "logferry"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.name))
    error_message = "name must be 1-255 letters, digits, hyphens or underscores (an ECS container name)."
  }
}

variable "image" {
  description = "Router image, e.g. \"123456789012.dkr.ecr.eu-west-1.amazonaws.com/logferry:1.2.3\" (build it from router/Dockerfile). Pin a tag or digest, never latest."
  type        = string

  validation {
    condition     = length(var.image) > 0 && !endswith(var.image, ":latest")
    error_message = "image must be set and must not use the mutable :latest tag."
  }
}

variable "region" {
  description = "AWS region of the destinations (written into each sink's region)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like an AWS region, e.g. eu-west-1."
  }
}

variable "app_container_name" {
  description = "Name of the application container: it waits for the router to be HEALTHY, and records are enriched with its container_name and container_id."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,255}$", var.app_container_name))
    error_message = "app_container_name must be an ECS container name."
  }
}

variable "cpu" {
  description = "CPU units reserved for the router (1024 = one vCPU)."
  type        = number
  default     = 64

  validation {
    condition     = var.cpu >= 16 && var.cpu <= 4096
    error_message = "cpu must be between 16 and 4096 units."
  }
}

variable "memory_reservation" {
  description = "Soft memory limit (MiB) of the router container."
  type        = number
  default     = 64

  validation {
    condition     = var.memory_reservation >= 32
    error_message = "memory_reservation must be at least 32 MiB."
  }
}

variable "memory" {
  description = "Hard memory limit (MiB) of the router container; keep it well above memory_limit."
  type        = number
  default     = 128

  validation {
    condition     = var.memory >= 64
    error_message = "memory must be at least 64 MiB."
  }
}

variable "essential" {
  description = "Whether the task stops when the router stops. Default false: the app's dependsOn orders start-up and shutdown, and a router restart does not kill the app."
  type        = bool
  default     = false
}

variable "user" {
  description = "User (uid:gid) the router runs as; the image's non-root user by default."
  type        = string
  default     = "65532:65532"

  validation {
    condition     = can(regex("^[1-9][0-9]*(:[0-9]+)?$", var.user))
    error_message = "user must be a numeric non-root uid, optionally with :gid."
  }
}

variable "stop_timeout" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL: the router's time to flush (Fargate allows at most 120)."
  type        = number
  default     = 30

  validation {
    condition     = var.stop_timeout >= 2 && var.stop_timeout <= 120
    error_message = "stop_timeout must be between 2 and 120 seconds."
  }
}

variable "router_log_group" {
  description = "CloudWatch log group for the router's own stderr (awslogs driver). Empty: no log driver is configured."
  type        = string
  default     = ""
}

variable "log_level" {
  description = "The router's own log level (LOGFERRY_LOG)."
  type        = string
  default     = "info"

  validation {
    condition     = contains(["error", "warn", "info", "debug", "trace"], var.log_level)
    error_message = "log_level must be one of error, warn, info, debug, trace."
  }
}

# -- volumes ---------------------------------------------------------------------------------

variable "log_volume_name" {
  description = "Name of the task volume the app writes its logs to and the router reads."
  type        = string
  default     = "app-logs"
}

variable "log_volume_host_path" {
  description = "EC2 launch type only: host directory behind the log volume. Empty: a task-scoped volume (Fargate ephemeral storage, or a Docker volume on EC2) that lives as long as the task."
  type        = string
  default     = ""

  validation {
    condition     = var.log_volume_host_path == "" || startswith(var.log_volume_host_path, "/")
    error_message = "log_volume_host_path must be empty or an absolute path."
  }
}

variable "log_dir" {
  description = "Where the log volume is mounted in both containers."
  type        = string
  default     = "/var/log/app"

  validation {
    condition     = startswith(var.log_dir, "/") && !endswith(var.log_dir, "/")
    error_message = "log_dir must be an absolute path without a trailing slash."
  }
}

variable "data_volume_name" {
  description = "Name of the router's own volume for data_dir (checkpoints); the root filesystem is read-only."
  type        = string
  default     = "logferry-data"
}

# -- the router config (rendered into LOGFERRY_CONFIG) ---------------------------------------

variable "data_dir" {
  description = "The router's [global] data_dir: the data volume's mount point."
  type        = string
  default     = "/var/lib/logferry"

  validation {
    condition     = startswith(var.data_dir, "/")
    error_message = "data_dir must be an absolute path."
  }
}

variable "memory_limit" {
  description = "The router's [global] memory_limit: bound on record data buffered in memory."
  type        = string
  default     = "32MiB"

  validation {
    condition     = can(regex("^[0-9]+(KiB|MiB|GiB)$", var.memory_limit))
    error_message = "memory_limit must be a size like \"32MiB\"."
  }
}

variable "api_address" {
  description = "Address of /healthz, /readyz and /metrics. Loopback only: the container health check runs inside the task."
  type        = string
  default     = "127.0.0.1:2020"

  validation {
    condition     = can(regex("^127\\.0\\.0\\.1:[0-9]{1,5}$", var.api_address))
    error_message = "api_address must be 127.0.0.1:PORT (never listen beyond loopback)."
  }
}

variable "log_include" {
  description = "Globs of the files to tail, under log_dir."
  type        = list(string)
  default     = ["/var/log/app/*.log"]

  validation {
    condition     = length(var.log_include) > 0 && alltrue([for g in var.log_include : startswith(g, "/")])
    error_message = "log_include must hold at least one absolute glob."
  }
}

variable "parser" {
  description = "How each line is parsed."
  type        = string
  default     = "json"

  validation {
    condition     = contains(["json", "none", "logfmt", "cri", "docker"], var.parser)
    error_message = "parser must be one of json, none, logfmt, cri, docker."
  }
}

variable "time_key" {
  description = "Field holding the event time (empty: the record's @timestamp, else the time it was read)."
  type        = string
  default     = ""
}

variable "enrich_ec2" {
  description = "Add EC2 instance fields from IMDSv2 (EC2 launch type; needs an IMDS hop limit of 2 for bridge/awsvpc tasks). Fargate has no IMDS: keep false."
  type        = bool
  default     = false
}

variable "environment" {
  description = "Static `environment` field added to every record (empty: none)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]*$", var.environment))
    error_message = "environment may hold letters, digits, dots, hyphens and underscores."
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

variable "s3_compression" {
  description = "Object compression of the s3 sink."
  type        = string
  default     = "gzip"

  validation {
    condition     = contains(["gzip", "zstd", "none"], var.s3_compression)
    error_message = "s3_compression must be gzip, zstd or none."
  }
}

variable "s3_max_object_size" {
  description = "Uncompressed bytes per S3 object."
  type        = string
  default     = "50MiB"

  validation {
    condition     = can(regex("^[0-9]+(KiB|MiB|GiB)$", var.s3_max_object_size))
    error_message = "s3_max_object_size must be a size like \"50MiB\"."
  }
}

variable "s3_flush_interval" {
  description = "Longest an S3 object stays open."
  type        = string
  default     = "60s"

  validation {
    condition     = can(regex("^[0-9]+(ms|s|m|h)$", var.s3_flush_interval))
    error_message = "s3_flush_interval must be a duration like \"60s\"."
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

variable "cloudwatch_log_stream" {
  description = "log_stream template of the cloudwatch_logs sink."
  type        = string
  default     = "{container_name}/{ecs_task_id}"
}

variable "cloudwatch_flush_interval" {
  description = "Longest a CloudWatch event waits."
  type        = string
  default     = "5s"

  validation {
    condition     = can(regex("^[0-9]+(ms|s|m|h)$", var.cloudwatch_flush_interval))
    error_message = "cloudwatch_flush_interval must be a duration like \"5s\"."
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
