data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}

locals {
  partition = data.aws_partition.current.partition
  account   = data.aws_caller_identity.current.account_id

  # Every template variable is the module variable of the same name (deploy-tests checks this
  # and renders the template with each example's values).
  config = templatefile("${path.module}/templates/logferry.toml.tftpl", {
    data_dir                  = var.data_dir
    memory_limit              = var.memory_limit
    api_address               = var.api_address
    log_include               = var.log_include
    parser                    = var.parser
    time_key                  = var.time_key
    enrich_ec2                = var.enrich_ec2
    app_container_name        = var.app_container_name
    environment               = var.environment
    region                    = var.region
    s3_bucket                 = var.s3_bucket
    s3_key_prefix             = var.s3_key_prefix
    s3_compression            = var.s3_compression
    s3_max_object_size        = var.s3_max_object_size
    s3_flush_interval         = var.s3_flush_interval
    s3_kms_key_arn            = var.s3_kms_key_arn
    cloudwatch_log_group      = var.cloudwatch_log_group
    cloudwatch_log_stream     = var.cloudwatch_log_stream
    cloudwatch_flush_interval = var.cloudwatch_flush_interval
    firehose_delivery_stream  = var.firehose_delivery_stream
  })

  any_sink = var.s3_bucket != "" || var.cloudwatch_log_group != "" || var.firehose_delivery_stream != ""

  # The IAM resource for the s3 sink: the key prefix up to its first template part.
  s3_static_prefix = regex("^[^{%]*", var.s3_key_prefix)
  log_group_arn    = "arn:${local.partition}:logs:${var.region}:${local.account}:log-group:${var.cloudwatch_log_group}"

  log_mount  = { sourceVolume = var.log_volume_name, containerPath = var.log_dir }
  data_mount = { sourceVolume = var.data_volume_name, containerPath = var.data_dir, readOnly = false }

  container_definition = merge(
    {
      name              = var.name
      image             = var.image
      essential         = var.essential
      cpu               = var.cpu
      memoryReservation = var.memory_reservation
      memory            = var.memory
      user              = var.user
      # The config is inline; the data dir is a volume, so the root file system stays read-only.
      readonlyRootFilesystem = true
      command                = ["run"]
      environment = [
        { name = "LOGFERRY_CONFIG", value = local.config },
        { name = "LOGFERRY_LOG", value = var.log_level },
      ]
      mountPoints = [
        merge(local.log_mount, { readOnly = true }),
        local.data_mount,
      ]
      # The image is distroless (no shell, no curl): the binary checks its own /healthz.
      healthCheck = {
        command     = ["CMD", "/usr/local/bin/logferry", "healthcheck", "--url", "http://${var.api_address}/healthz"]
        interval    = 10
        timeout     = 5
        retries     = 3
        startPeriod = 10
      }
      stopTimeout     = var.stop_timeout
      linuxParameters = { capabilities = { drop = ["ALL"] } }
      dockerLabels    = { "logferry.role" = "log-router" }
    },
    # Only with a router_log_group (a filtered for expression: a conditional between {} and
    # an object would not type-check).
    {
      for k, v in {
        logConfiguration = {
          logDriver = "awslogs"
          options = {
            awslogs-group         = var.router_log_group
            awslogs-region        = var.region
            awslogs-stream-prefix = var.name
          }
        }
      } : k => v if var.router_log_group != ""
    },
  )

  volumes = [
    merge(
      { name = var.log_volume_name },
      { for k, v in { host = { sourcePath = var.log_volume_host_path } } : k => v if var.log_volume_host_path != "" },
    ),
    { name = var.data_volume_name },
  ]
}

# Exactly the calls the chosen sinks make, on exactly their resources.
data "aws_iam_policy_document" "router" {
  dynamic "statement" {
    for_each = var.s3_bucket == "" ? [] : [1]
    content {
      sid = "S3WriteUnderPrefix"
      # PutObject also authorizes CreateMultipartUpload, UploadPart and CompleteMultipartUpload.
      actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
      resources = ["arn:${local.partition}:s3:::${var.s3_bucket}/${local.s3_static_prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = var.s3_bucket != "" && var.s3_kms_key_arn != "" ? [1] : []
    content {
      sid = "KmsForS3Objects"
      # Decrypt: S3 needs it to complete a multipart upload under SSE-KMS.
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [var.s3_kms_key_arn]
    }
  }

  dynamic "statement" {
    for_each = var.cloudwatch_log_group == "" ? [] : [1]
    content {
      sid = "CloudWatchLogsWrite"
      # CreateLogGroup on this one group only: the sink asks for the group before it creates
      # a stream, and Terraform's group answers "already exists".
      actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
      resources = ["${local.log_group_arn}:*"]
    }
  }

  dynamic "statement" {
    for_each = var.firehose_delivery_stream == "" ? [] : [1]
    content {
      sid       = "FirehosePut"
      actions   = ["firehose:PutRecordBatch"]
      resources = ["arn:${local.partition}:firehose:${var.region}:${local.account}:deliverystream/${var.firehose_delivery_stream}"]
    }
  }

  lifecycle {
    precondition {
      condition     = local.any_sink
      error_message = "Set at least one of s3_bucket, cloudwatch_log_group, firehose_delivery_stream."
    }
  }
}
