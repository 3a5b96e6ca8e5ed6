data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}

locals {
  partition = data.aws_partition.current.partition
  account   = data.aws_caller_identity.current.account_id
  any_sink  = var.s3_bucket != "" || var.cloudwatch_log_group != "" || var.firehose_delivery_stream != "" || var.kinesis_stream != ""

  # The IAM resource for the s3 sink: the key prefix up to its first template part.
  s3_static_prefix = regex("^[^{%]*", var.s3_key_prefix)
  log_group_arn    = "arn:${local.partition}:logs:${var.region}:${local.account}:log-group:${var.cloudwatch_log_group}"
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
      # No CreateLogGroup: the group is Terraform's; the sink takes AccessDenied on
      # CreateLogGroup as "it exists" and goes on to CreateLogStream.
      actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
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

  dynamic "statement" {
    for_each = var.kinesis_stream == "" ? [] : [1]
    content {
      sid       = "KinesisPut"
      actions   = ["kinesis:PutRecords"]
      resources = ["arn:${local.partition}:kinesis:${var.region}:${local.account}:stream/${var.kinesis_stream}"]
    }
  }

  lifecycle {
    precondition {
      condition     = local.any_sink
      error_message = "Set at least one of s3_bucket, cloudwatch_log_group, firehose_delivery_stream, kinesis_stream."
    }
  }
}
