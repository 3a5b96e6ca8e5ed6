# An ECS Fargate service: the app and the Logferry router in one task, sharing an ephemeral
# volume; the router ships the app's log files to S3 and CloudWatch Logs with the task role.

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

module "destinations" {
  source = "../../modules/logferry-destinations"

  name_prefix              = var.name
  bucket_name              = var.bucket_name
  log_group_retention_days = var.log_retention_days
  indexer_zip_path         = var.indexer_zip_path
  create_glue_tables       = true
  glue_cluster_names       = [var.name]

  # Each closed hour of this cluster's objects becomes Parquet under compacted/ (table
  # logs_parquet), once the indexer exists; compacted inputs are tagged, then expire.
  compactor_enabled               = var.compactor_enabled
  compact_sources                 = { (var.name) = "logs/${var.name}/%Y/%m/%d/%H/" }
  compact_columns                 = var.compact_columns
  compacted_input_expiration_days = var.compacted_input_expiration_days
}

module "logferry" {
  source = "../../modules/logferry-sidecar"

  image                = var.router_image
  region               = var.region
  app_container_name   = "app"
  environment          = "demo"
  s3_bucket            = module.destinations.bucket_name
  s3_key_prefix        = "logs/{ecs_cluster}/%Y/%m/%d/%H/"
  cloudwatch_log_group = module.destinations.log_group_name
  router_log_group     = aws_cloudwatch_log_group.containers.name
}

resource "aws_cloudwatch_log_group" "containers" {
  # checkov:skip=CKV_AWS_158:The containers' own stdout/stderr; KMS is left to the user (CloudWatch encrypts at rest).
  # checkov:skip=CKV_AWS_338:The containers' own stdout/stderr, not the archive (that is S3): retention is a variable, default 30 days.
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# The task role: exactly what the router's sinks need (module.logferry.iam_policy_json).
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "task_logferry" {
  name   = "logferry"
  role   = aws_iam_role.task.id
  policy = module.logferry.iam_policy_json
}

# The execution role: pull images, write the containers' own stdout/stderr.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_ecs_task_definition" "app" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  task_role_arn            = aws_iam_role.task.arn
  execution_role_arn       = aws_iam_role.execution.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([
    {
      name                   = "app"
      image                  = var.app_image
      essential              = true
      readonlyRootFilesystem = true
      command                = ["sh", "-c", "i=0; while true; do i=$((i+1)); printf '{\"level\":\"info\",\"msg\":\"hello from the app\",\"n\":%d}\\n' $i >> /var/log/app/app.log; sleep 5; done"]
      # Written by the app, read by the router.
      mountPoints = module.logferry.app_mount_points
      # Start once the router is HEALTHY; on stop, the app stops first and the router drains.
      dependsOn = module.logferry.app_depends_on
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.containers.name
          awslogs-region        = var.region
          awslogs-stream-prefix = "app"
        }
      }
    },
    module.logferry.container_definition,
  ])

  dynamic "volume" {
    for_each = module.logferry.volumes
    content {
      name = volume.value.name
    }
  }
}

resource "aws_security_group" "task" {
  # checkov:skip=CKV2_AWS_5:Attached to the service below (checkov cannot follow it through the network_configuration).
  name        = "${var.name}-task"
  description = "Logferry demo task: no inbound, HTTPS out to AWS APIs"
  vpc_id      = var.vpc_id

  egress {
    description = "HTTPS to AWS APIs (S3, CloudWatch Logs, ECR)"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_ecs_service" "app" {
  name             = var.name
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.app.arn
  desired_count    = 1
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.task.id]
    assign_public_ip = false
  }
}
